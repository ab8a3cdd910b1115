package faults_test

import (
	"log/slog"
	"net/http"
	"testing"

	"github.com/evergrant/evergrant/authserver"
	"github.com/evergrant/evergrant/internal/astest"
	"github.com/evergrant/evergrant/internal/faults"
)

// env is an authorization server behind an Injector on loopback, and a
// client that does not follow redirects.
type env struct {
	*astest.Env
	inj *faults.Injector
}

// newEnv starts a server.
func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{}
	e.Env = astest.New(t, nil, func(as *authserver.Server, logger *slog.Logger) http.Handler {
		e.inj = faults.New(as, logger)
		return e.inj
	})
	return e
}
