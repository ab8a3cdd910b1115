package authserver_test

import (
	"testing"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/astest"
)

// The names these tests use for the constants and helpers of
// internal/astest, which the tests of internal/faults share.
const (
	testResource   = astest.Resource
	rsClientID     = astest.RSClientID // confidential, for introspection
	rsClientSecret = astest.RSClientSecret
	postClientID   = astest.PostClientID
	postSecret     = astest.PostClientSecret
	loopbackRedir  = astest.LoopbackRedirect
)

var (
	decode         = astest.Decode
	pkce           = astest.PKCE
	authParams     = astest.AuthParams
	redirectParams = astest.RedirectParams
	str            = astest.Str
	wantTokenError = astest.WantTokenError
)

// env is an authorization server on loopback plus a client that does not
// follow redirects (astest.Env), with the helpers only these tests use.
type env struct{ *astest.Env }

// newEnv starts a server; mod may adjust the config (Issuer is set already).
func newEnv(t *testing.T, mod func(*authserver.Config)) *env {
	t.Helper()
	return &env{astest.New(t, mod, nil)}
}
