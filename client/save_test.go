package client_test

import (
	"context"
	"errors"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/internal/testclock"
	"github.com/evergrant/evergrant/store"
)

// errDiskFull is the failure a saveFault injects.
var errDiskFull = errors.New("no space left on device (injected)")

// saveFault is a real store whose Save fails while fail is set, as a full
// disk or a read-only directory would make it fail.
type saveFault struct {
	store.Store
	fail atomic.Bool
}

func (s *saveFault) Save(ctx context.Context, g *store.Grant) error {
	if s.fail.Load() {
		return errDiskFull
	}
	return s.Store.Save(ctx, g)
}

// TestRule2_FailedSaveLosesNothing: when the store fails to save a
// refreshed grant, the Transport keeps and uses it, refreshes from it next
// time (the stored refresh token was consumed: presenting it would look
// like theft and cost the grant), reports the failure (event, Stats, an
// error from Wait matching ErrGrantNotSaved), and saves it once the store
// works again (docs/design.md#client-rule-2).
func TestRule2_FailedSaveLosesNothing(t *testing.T) {
	st := fixture.New(t, fixture.Options{AccessTokenTTL: 10 * time.Minute})
	files, err := store.OpenFile(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	fs := &saveFault{Store: files}
	clock := testclock.New(time.Now())
	var saveEvents, savedEvents, reauth atomic.Int32
	tr := client.NewTransport(client.Config{Store: fs, Authorizer: &client.HeadlessAuthorizer{}, Now: clock.Now,
		OnNeedsReauth: func(*client.NeedsReauthError) { reauth.Add(1) },
		OnEvent: func(e client.Event) {
			switch e.Kind {
			case client.EventSaveFailed:
				if !errors.Is(e.Err, client.ErrGrantNotSaved) {
					t.Errorf("save_failed event error %v does not match ErrGrantNotSaved", e.Err)
				}
				saveEvents.Add(1)
			case client.EventSaved:
				savedEvents.Add(1)
			}
		}})
	hc := &http.Client{Transport: tr}
	if err := tr.Authorize(t.Context(), st.URL); err != nil {
		t.Fatal(err)
	}
	call := func(id int) {
		t.Helper()
		resp, data, err := ccPost(t.Context(), hc, st.URL, id)
		if err == nil {
			err = ccCheckEcho(resp, data, id)
		}
		if err != nil {
			t.Fatalf("call %d: %v", id, err)
		}
	}

	fs.fail.Store(true)
	clock.Advance(10*time.Minute + time.Second) // expired: the call refreshes first
	call(1)
	if s := tr.Stats(); s.Refreshes != 1 || s.SaveFailures != 1 {
		t.Fatalf("Stats after the failed save = %+v, want 1 refresh and 1 save failure", s)
	}
	if n := saveEvents.Load(); n != 1 {
		t.Errorf("%d save_failed events, want 1", n)
	}
	// The next expiry: the refresh must start from the kept grant, not
	// from the stored one whose refresh token the server has rotated away.
	clock.Advance(10*time.Minute + time.Second)
	call(2)
	if n := st.Refreshes(); n != 2 {
		t.Errorf("refresh grants = %d, want 2", n)
	}
	if n := reauth.Load(); n != 0 {
		t.Fatalf("OnNeedsReauth fired %d times: the grant was lost", n)
	}
	wctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := tr.Wait(wctx); !errors.Is(err, client.ErrGrantNotSaved) {
		t.Fatalf("Wait with the store still failing: %v, want ErrGrantNotSaved", err)
	}

	// The store works again: Wait saves the kept grant.
	fs.fail.Store(false)
	if err := tr.Wait(wctx); err != nil {
		t.Fatalf("Wait once the store works: %v", err)
	}
	if n := savedEvents.Load(); n != 1 {
		t.Errorf("%d saved events, want 1", n)
	}
	// A new Transport on the store (the next process) goes on with the
	// saved grant: its refresh presents the latest refresh token (an older
	// one would be taken for a reuse, and revoke the grant).
	next := client.NewTransport(client.Config{Store: files, Now: clock.Now})
	clock.Advance(10*time.Minute + time.Second)
	resp, data, err := ccPost(t.Context(), &http.Client{Transport: next}, st.URL, 3)
	if err == nil {
		err = ccCheckEcho(resp, data, 3)
	}
	if err != nil {
		t.Fatalf("the next process: %v", err)
	}
	if n := st.Refreshes(); n != 3 {
		t.Errorf("refresh grants = %d, want 3", n)
	}
}
