package server_test

import (
	"context"
	"encoding/json"
	"testing"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
)

// JWT verification against a bare signature check (docs/design.md#proof): run both
// in one invocation and compare ns/op, e.g.
//
//	go test ./server -run '^$' -bench 'JWTVerify|BareSignatureCheck' -benchmem
//
// Both verify the same ES256 token from the embedded authorization server.

// BenchmarkJWTVerify is the whole of JWTVerifier.Verify with the JWKS
// cached: parse, header and key checks, signature, claims and TokenInfo.
func BenchmarkJWTVerify(b *testing.B) {
	e := newVTAS(b, nil)
	tok := e.token()
	v := e.jwtVerifier(nil)
	ctx := context.Background()
	if _, err := v.Verify(ctx, tok); err != nil { // warm the JWKS cache
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := v.Verify(ctx, tok); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBareSignatureCheck is go-jose alone: ParseSigned and Claims with
// the right key, nothing else checked.
func BenchmarkBareSignatureCheck(b *testing.B) {
	e := newVTAS(b, nil)
	tok := e.token()
	var set jose.JSONWebKeySet
	if err := json.Unmarshal(e.as.JWKS(), &set); err != nil {
		b.Fatal(err)
	}
	key := set.Keys[0].Key
	algs := []jose.SignatureAlgorithm{jose.ES256}
	b.ReportAllocs()
	for b.Loop() {
		t, err := jwt.ParseSigned(tok, algs)
		if err != nil {
			b.Fatal(err)
		}
		var c jwt.Claims
		if err := t.Claims(key, &c); err != nil {
			b.Fatal(err)
		}
	}
}
