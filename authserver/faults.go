package authserver

import (
	"sync"
	"time"
)

// Faults injects failures into a Server, for tests and `evergrant check`.
// Server.Faults returns one only when Config.EnableFaults is set. All
// methods are safe for concurrent use.
type Faults struct {
	mu            sync.Mutex
	refuseRefresh bool
	tokenStatus   int
	accessTTL     time.Duration
	tokenDelay    time.Duration
}

// Faults returns the fault injector, or nil unless Config.EnableFaults.
func (s *Server) Faults() *Faults { return s.faults }

// RefuseRefresh makes every refresh_token grant fail with invalid_grant
// while on is true, as if the refresh token had been revoked.
func (f *Faults) RefuseRefresh(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.refuseRefresh = on
}

// FailTokenEndpoint makes the token endpoint answer every request with the
// given HTTP status (for example 503) and no effect. Zero turns it off.
func (f *Faults) FailTokenEndpoint(status int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenStatus = status
}

// SetAccessTokenTTL overrides the lifetime of access tokens issued from now
// on. Zero restores the configured lifetime.
func (f *Faults) SetAccessTokenTTL(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.accessTTL = d
}

// DelayToken makes the token endpoint wait d before answering. Zero turns it
// off.
func (f *Faults) DelayToken(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenDelay = d
}

type faultState struct {
	refuseRefresh bool
	tokenStatus   int
	accessTTL     time.Duration
	tokenDelay    time.Duration
}

func (f *Faults) state() faultState {
	if f == nil {
		return faultState{}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return faultState{f.refuseRefresh, f.tokenStatus, f.accessTTL, f.tokenDelay}
}
