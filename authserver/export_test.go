package authserver

// Hooks into a Server's internals for the tests of package authserver_test.

// SetMaxPending sets how many consent requests may wait at once.
func SetMaxPending(s *Server, n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.maxPending = n
}

// PendingCount returns how many consent requests are waiting.
func PendingCount(s *Server) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.pending) != s.pendingOrder.Len() {
		panic("pending map and queue disagree")
	}
	return len(s.pending)
}

// SetDocumentCacheSize sets how many Client ID Metadata Documents are kept.
func SetDocumentCacheSize(s *Server, n int) {
	s.docs.mu.Lock()
	defer s.docs.mu.Unlock()
	s.docs.max = n
}

// DocumentCacheLen returns how many Client ID Metadata Documents are kept.
func DocumentCacheLen(s *Server) int {
	s.docs.mu.Lock()
	defer s.docs.mu.Unlock()
	if len(s.docs.byURL) != s.docs.lru.Len() {
		panic("document cache map and list disagree")
	}
	return s.docs.lru.Len()
}

// OnDocumentFetchWait sets a function called with the URL whenever a request
// is about to wait for a Client ID Metadata Document fetch.
func OnDocumentFetchWait(s *Server, f func(url string)) {
	s.docs.mu.Lock()
	defer s.docs.mu.Unlock()
	s.docs.onWait = f
}

// MemoryStoreCounts returns how many records of each kind m holds.
func MemoryStoreCounts(m *MemoryStore) map[string]int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, hs := range m.retired {
		n += len(hs)
	}
	return map[string]int{
		"clients": len(m.clients), "grants": len(m.grants), "codes": len(m.codes),
		"refresh_tokens": len(m.refresh), "access_tokens": len(m.access), "retired_index": n,
	}
}
