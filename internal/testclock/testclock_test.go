package testclock_test

import (
	"sync"
	"testing"
	"time"

	"github.com/evergrant/evergrant/internal/testclock"
)

func TestClock(t *testing.T) {
	start := time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC)
	c := testclock.New(start)
	if got := c.Now(); !got.Equal(start) {
		t.Fatalf("Now = %v, want the start %v", got, start)
	}
	if got := c.Now(); !got.Equal(start) {
		t.Fatalf("Now = %v a second time, want it to stand still at %v", got, start)
	}
	c.Advance(90 * time.Second)
	if got, want := c.Now(), start.Add(90*time.Second); !got.Equal(want) {
		t.Fatalf("after Advance(90s): %v, want %v", got, want)
	}
	c.Advance(-30 * time.Second)
	if got, want := c.Now(), start.Add(time.Minute); !got.Equal(want) {
		t.Fatalf("after Advance(-30s): %v, want %v", got, want)
	}
	later := start.Add(time.Hour)
	c.Set(later)
	if got := c.Now(); !got.Equal(later) {
		t.Fatalf("after Set: %v, want %v", got, later)
	}
}

// AdvanceTo moves the clock forward to a later time and never back.
func TestClockAdvanceTo(t *testing.T) {
	start := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	c := testclock.New(start)
	c.AdvanceTo(start.Add(-time.Second))
	if got := c.Now(); !got.Equal(start) {
		t.Fatalf("after AdvanceTo(an earlier time): %v, want it to stay at %v", got, start)
	}
	c.AdvanceTo(start)
	if got := c.Now(); !got.Equal(start) {
		t.Fatalf("after AdvanceTo(its own time): %v, want %v", got, start)
	}
	later := start.Add(time.Minute)
	c.AdvanceTo(later)
	if got := c.Now(); !got.Equal(later) {
		t.Fatalf("after AdvanceTo(a later time): %v, want %v", got, later)
	}
	now := time.Now()
	c.Set(now.Add(-time.Hour))
	c.AdvanceTo(now)
	if got := c.Now(); got != now.Round(0) {
		t.Errorf("after AdvanceTo(time.Now()): %#v, want the wall clock reading of %v", got, now)
	}
}

// Concurrent AdvanceTo calls leave the clock at the latest of their times
// (run with -race).
func TestClockAdvanceToConcurrent(t *testing.T) {
	start := time.Unix(2_000_000_000, 0)
	c := testclock.New(start)
	var wg sync.WaitGroup
	for i := range 50 {
		wg.Go(func() {
			c.AdvanceTo(start.Add(time.Duration(i) * time.Second))
			_ = c.Now()
		})
	}
	wg.Wait()
	if got, want := c.Now(), start.Add(49*time.Second); !got.Equal(want) {
		t.Errorf("after AdvanceTo(start+0s … start+49s) at once: %v, want %v", got, want)
	}
}

// A Clock made from time.Now keeps no monotonic reading: its times compare
// like times read back from a store.
func TestClockHasNoMonotonicReading(t *testing.T) {
	now := time.Now()
	c := testclock.New(now)
	if got := c.Now(); got != now.Round(0) {
		t.Errorf("Now = %#v, want the wall clock reading of %v", got, now)
	}
	c.Set(now.Add(time.Second))
	if got := c.Now(); got != now.Add(time.Second).Round(0) {
		t.Errorf("after Set: %#v, want a wall clock reading", got)
	}
}

// Advance and Now may be called concurrently (run with -race).
func TestClockConcurrentUse(t *testing.T) {
	start := time.Unix(2_000_000_000, 0)
	c := testclock.New(start)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 100 {
				c.Advance(time.Millisecond)
				_ = c.Now()
			}
		})
	}
	wg.Wait()
	if got, want := c.Now(), start.Add(800*time.Millisecond); !got.Equal(want) {
		t.Errorf("after 800 concurrent Advance(1ms): %v, want %v", got, want)
	}
}
