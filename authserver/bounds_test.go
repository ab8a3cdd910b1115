package authserver_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/evergrant/evergrant/authserver"
)

// A full table of pending consent requests drops the oldest instead of
// refusing new ones, so unauthenticated requests cannot lock users out.
func TestConsent_FullTableEvictsTheOldest(t *testing.T) {
	clk := newClock()
	e, id := consentEnv(t, clk)
	const limit = 3
	authserver.SetMaxPending(e.AS, limit)
	type started struct {
		page     *consentPage
		verifier string
	}
	var reqs []started
	for range limit + 2 {
		v, c := pkce()
		// getConsent fails unless the consent page is shown.
		reqs = append(reqs, started{getConsent(t, e, authParams(id, loopbackRedir, c)), v})
	}
	if n := authserver.PendingCount(e.AS); n != limit {
		t.Fatalf("%d pending consent requests, want %d", n, limit)
	}
	for i, s := range reqs[:2] {
		r, body := submitConsent(t, e, s.page.form("approve"), s.page.cookie)
		wantForbidden(t, "evicted request #"+string(rune('0'+i)), r, body)
	}
	for _, s := range reqs[2:] {
		r, _ := submitConsent(t, e, s.page.form("approve"), s.page.cookie)
		q := redirectParams(t, r, loopbackRedir)
		if st, m := e.Exchange(id, loopbackRedir, q.Get("code"), s.verifier); st != http.StatusOK {
			t.Fatalf("exchange after approving a kept request: %d %v", st, m)
		}
	}
	if n := authserver.PendingCount(e.AS); n != 0 {
		t.Fatalf("%d pending consent requests after all were answered, want 0", n)
	}

	// Expired requests are collected.
	for range limit {
		_, c := pkce()
		getConsent(t, e, authParams(id, loopbackRedir, c))
	}
	clk.Advance(11 * time.Minute)
	e.Authorize(url.Values{}) // any request runs the collection
	if n := authserver.PendingCount(e.AS); n != 0 {
		t.Fatalf("%d pending consent requests after they expired, want 0", n)
	}
}

// docsServer publishes a valid Client ID Metadata Document at every path
// /c/NAME.json, counting the fetches of each. A fetch of a path in gate
// waits until the gate is closed.
type docsServer struct {
	ts      *httptest.Server
	mu      sync.Mutex
	fetches map[string]int
	gate    chan struct{}
}

func newDocsServer(t *testing.T) *docsServer {
	t.Helper()
	d := &docsServer{fetches: map[string]int{}}
	d.ts = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasPrefix(r.URL.Path, "/c/") {
			http.NotFound(w, r)
			return
		}
		d.mu.Lock()
		d.fetches[r.URL.Path]++
		gate := d.gate
		d.mu.Unlock()
		if gate != nil {
			<-gate
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(cimdDoc(d.ts.URL + r.URL.Path))
	}))
	t.Cleanup(d.ts.Close)
	return d
}

func (d *docsServer) url(name string) string { return d.ts.URL + "/c/" + name + ".json" }

func (d *docsServer) count(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.fetches["/c/"+name+".json"]
}

// The document cache stays within its bound, and a document is still usable
// after others pushed it out of the cache.
func TestCIMD_CacheIsBounded(t *testing.T) {
	d := newDocsServer(t)
	e := cimdEnv(t)
	const limit = 4
	authserver.SetDocumentCacheSize(e.AS, limit)
	_, c := pkce()
	for i := range 3 * limit {
		e.Code(d.url(string(rune('a'+i))), loopbackRedir, c)
		if n := authserver.DocumentCacheLen(e.AS); n > limit {
			t.Fatalf("%d documents cached after %d fetched, want at most %d", n, i+1, limit)
		}
	}
	if n := authserver.DocumentCacheLen(e.AS); n != limit {
		t.Fatalf("%d documents cached, want %d", n, limit)
	}
	// The first document was evicted: the whole flow fetches it again.
	tok := e.Tokens(d.url("a"), loopbackRedir)
	if str(tok, "access_token") == "" {
		t.Fatalf("token response %v", tok)
	}
	if n := d.count("a"); n != 2 {
		t.Errorf("evicted document fetched %d times in all, want 2", n)
	}
	// Least recently used goes first: "a" was just used, so fetching one
	// more new document keeps it.
	e.Code(d.url("z"), loopbackRedir, c)
	e.Code(d.url("a"), loopbackRedir, c)
	if n := d.count("a"); n != 2 {
		t.Errorf("recently used document fetched again (%d fetches), want it kept", n)
	}
}

// Concurrent authorization requests naming one new document share a fetch.
func TestCIMD_ConcurrentRequestsFetchOnce(t *testing.T) {
	d := newDocsServer(t)
	d.gate = make(chan struct{})
	e := cimdEnv(t)
	const n = 8
	waiting := make(chan string, n)
	authserver.OnDocumentFetchWait(e.AS, func(u string) { waiting <- u })
	doc := d.url("shared")
	var wg sync.WaitGroup
	var ok atomic.Int64
	for range n {
		wg.Go(func() {
			_, c := pkce()
			r, err := e.Client.Get(e.URL(authserver.PathAuthorize) + "?" + authParams(doc, loopbackRedir, c).Encode())
			if err != nil {
				return
			}
			r.Body.Close()
			if loc, _ := url.Parse(r.Header.Get("Location")); r.StatusCode == http.StatusFound && loc.Query().Get("code") != "" {
				ok.Add(1)
			}
		})
	}
	for range n { // every request is waiting for the document
		if u := <-waiting; u != doc {
			t.Errorf("waited for %s, want %s", u, doc)
		}
	}
	close(d.gate)
	wg.Wait()
	if got := d.count("shared"); got != 1 {
		t.Errorf("document fetched %d times for %d concurrent requests, want 1", got, n)
	}
	if ok.Load() != n {
		t.Errorf("%d of %d requests got a code", ok.Load(), n)
	}
}
