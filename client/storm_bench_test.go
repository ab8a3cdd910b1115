package client_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"sync"
	"testing"

	"github.com/evergrant/evergrant/client"
	"github.com/evergrant/evergrant/internal/fixture"
	"github.com/evergrant/evergrant/store"
)

const stormSize = 50

// storm sends stormSize concurrent calls and returns how many failed.
func storm(hc *http.Client, url string) int {
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for i := range stormSize {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := hc.Post(url, "application/json", bytes.NewReader(rpcBody(i)))
			if err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
			if err != nil || resp.StatusCode != 200 {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed
}

func benchStorm(b *testing.B, expire bool) {
	st := fixture.New(b, fixture.Options{})
	ms := &store.Memory{}
	boot := client.NewTransport(client.Config{Store: ms, Authorizer: &client.HeadlessAuthorizer{}})
	if err := boot.Authorize(context.Background(), st.URL); err != nil {
		b.Fatal(err)
	}
	tr := client.NewTransport(client.Config{Store: ms, RefreshMargin: -1})
	hc := &http.Client{Transport: tr}
	key, _ := client.ServerKey(st.URL)
	var mu sync.Mutex
	expired := map[string]bool{}
	st.ForceFunc(func(_ *http.Request, tok string) *fixture.Forced {
		mu.Lock()
		defer mu.Unlock()
		if expired[tok] {
			return &fixture.Forced{Status: 401, Challenge: invalidToken}
		}
		return nil
	})
	failed := 0
	r0 := st.Refreshes()
	b.ResetTimer()
	for b.Loop() {
		if expire {
			g, _ := ms.Load(context.Background(), key)
			mu.Lock()
			expired[g.AccessToken] = true // every call of this storm meets an expired token
			mu.Unlock()
		}
		failed += storm(hc, st.URL)
	}
	b.StopTimer()
	b.ReportMetric(float64(st.Refreshes()-r0)/float64(b.N), "grants/storm")
	b.ReportMetric(float64(failed)/float64(b.N), "failed/storm")
}

// BenchmarkStormValidToken is the baseline of BenchmarkRefreshStorm: 50
// concurrent calls with a token the server accepts (docs/design.md#proof).
func BenchmarkStormValidToken(b *testing.B) { benchStorm(b, false) }

// BenchmarkRefreshStorm: 50 concurrent calls all meet an expired token
// (docs/design.md#proof): how many refresh grants are sent (want 1, as
// docs/design.md#client-rule-7 says), how many calls fail (want 0), and
// the added latency against BenchmarkStormValidToken.
func BenchmarkRefreshStorm(b *testing.B) { benchStorm(b, true) }
