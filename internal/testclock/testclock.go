// Package testclock is a clock for tests that stands still until the test
// moves it. Pass its Now method wherever code takes a func() time.Time,
// for example client.Config.Now and authserver.Config.Now, and share one
// Clock between the parts of a test that must agree on the time.
package testclock

import (
	"sync"
	"time"
)

// Clock is a manual clock: Now returns the same time until Advance or Set
// moves it. It holds wall-clock readings only (no monotonic reading; see
// time.Time.Round), so its times compare and subtract like times read back
// from a store. A Clock is safe for concurrent use. Use New to make one.
type Clock struct {
	mu  sync.Mutex
	now time.Time
}

// New returns a Clock that stands at start.
func New(start time.Time) *Clock {
	return &Clock{now: start.Round(0)}
}

// Now returns the clock's current time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Advance moves the clock forward by d (backward when d is negative).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t.Round(0)
}

// AdvanceTo moves the clock to t, unless it already stands at or after t:
// it never moves the clock back. It checks and moves in one step, so
// goroutines that each wait for a time of their own (a fake sleep until
// t) may call it at once and leave the clock at the latest of their times.
func (c *Clock) AdvanceTo(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t.Round(0)
	}
}
