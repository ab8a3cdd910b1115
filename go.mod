module github.com/evergrant/evergrant

go 1.26.0

require (
	github.com/go-jose/go-jose/v4 v4.1.8
	golang.org/x/oauth2 v0.37.0
)

require golang.org/x/sync v0.24.0 // indirect
