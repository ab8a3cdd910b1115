package server

import (
	"context"
	"time"
)

// SetJWKSSleep replaces how v waits for the JWKS rate limit to allow the
// next fetch: f is called with the time (on v's clock) to wait for. Tests
// use it to move their clock instead of sleeping. Call it before v is used.
func SetJWKSSleep(v *JWTVerifier, f func(ctx context.Context, until time.Time) error) {
	v.keys.sleepUntil = f
}

// SetJWKSFetchWaitHook sets a function called each time a Verify call of v
// has started or joined a JWKS fetch, before it waits for it. Call it while
// no Verify call is under way.
func SetJWKSFetchWaitHook(v *JWTVerifier, f func()) {
	v.keys.testHookFetchWait = f
}
