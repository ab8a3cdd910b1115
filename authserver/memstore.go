package authserver

import (
	"context"
	"slices"
	"sync"
	"time"
)

// MemoryStore is a Store that keeps everything in process memory, so a
// restart forgets dynamically registered clients, grants and tokens. The
// zero value is ready to use. It is the default Store of New.
type MemoryStore struct {
	mu      sync.Mutex
	clients map[string]*Client
	grants  map[string]*Grant
	codes   map[string]*memCode
	refresh map[string]*RefreshToken
	access  map[string]*AccessToken
	keys    *SigningKeys
	// retired holds, per grant, the hashes of its rotated refresh tokens
	// in the order they were rotated, for PruneRefreshTokens.
	retired map[string][]string
}

type memCode struct {
	Code
	used bool
}

var (
	_ Store              = (*MemoryStore)(nil)
	_ RefreshTokenPruner = (*MemoryStore)(nil)
)

func (m *MemoryStore) init() {
	if m.clients == nil {
		m.clients = map[string]*Client{}
		m.grants = map[string]*Grant{}
		m.codes = map[string]*memCode{}
		m.refresh = map[string]*RefreshToken{}
		m.access = map[string]*AccessToken{}
		m.retired = map[string][]string{}
	}
}

func cloneClient(c *Client) *Client {
	cc := *c
	cc.SecretHash = slices.Clone(c.SecretHash)
	cc.Metadata.RedirectURIs = slices.Clone(c.Metadata.RedirectURIs)
	cc.Metadata.GrantTypes = slices.Clone(c.Metadata.GrantTypes)
	cc.Metadata.ResponseTypes = slices.Clone(c.Metadata.ResponseTypes)
	cc.Metadata.Contacts = slices.Clone(c.Metadata.Contacts)
	if p := c.Metadata.ClientSecretExpiresAt; p != nil {
		v := *p
		cc.Metadata.ClientSecretExpiresAt = &v
	}
	return &cc
}

// SaveClient implements Store.
func (m *MemoryStore) SaveClient(_ context.Context, c *Client) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	m.clients[c.ID] = cloneClient(c)
	return nil
}

// Client implements Store.
func (m *MemoryStore) Client(_ context.Context, id string) (*Client, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	c, ok := m.clients[id]
	if !ok {
		return nil, ErrNotFound
	}
	return cloneClient(c), nil
}

// SaveGrant implements Store.
func (m *MemoryStore) SaveGrant(_ context.Context, g *Grant) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	ng := *g
	ng.Scopes = slices.Clone(g.Scopes)
	if old, ok := m.grants[g.ID]; ok && old.Revoked {
		ng.Revoked = true
	}
	m.grants[g.ID] = &ng
	return nil
}

// Grant implements Store.
func (m *MemoryStore) Grant(_ context.Context, id string) (*Grant, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	g, ok := m.grants[id]
	if !ok {
		return nil, ErrNotFound
	}
	ng := *g
	ng.Scopes = slices.Clone(g.Scopes)
	return &ng, nil
}

// RevokeGrant implements Store.
func (m *MemoryStore) RevokeGrant(_ context.Context, id string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	g, ok := m.grants[id]
	if !ok {
		return ErrNotFound
	}
	g.Revoked = true
	return nil
}

// RevokeGrants implements Store.
func (m *MemoryStore) RevokeGrants(_ context.Context, f GrantFilter) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	n := 0
	for _, g := range m.grants {
		if !g.Revoked && f.match(g) {
			g.Revoked = true
			n++
		}
	}
	return n, nil
}

// SaveCode implements Store.
func (m *MemoryStore) SaveCode(_ context.Context, c *Code) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	nc := &memCode{Code: *c}
	nc.Scopes = slices.Clone(c.Scopes)
	m.codes[c.Hash] = nc
	return nil
}

// TakeCode implements Store.
func (m *MemoryStore) TakeCode(_ context.Context, hash string) (*Code, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	c, ok := m.codes[hash]
	if !ok {
		return nil, ErrNotFound
	}
	out := c.Code
	out.Scopes = slices.Clone(c.Scopes)
	if c.used {
		return &out, ErrCodeUsed
	}
	c.used = true
	return &out, nil
}

func cloneRefresh(t *RefreshToken) *RefreshToken {
	nt := *t
	nt.Scopes = slices.Clone(t.Scopes)
	return &nt
}

// SaveRefreshToken implements Store.
func (m *MemoryStore) SaveRefreshToken(_ context.Context, t *RefreshToken) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	m.refresh[t.Hash] = cloneRefresh(t)
	return nil
}

// RefreshToken implements Store.
func (m *MemoryStore) RefreshToken(_ context.Context, hash string) (*RefreshToken, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	t, ok := m.refresh[hash]
	if !ok {
		return nil, ErrNotFound
	}
	return cloneRefresh(t), nil
}

// RotateRefreshToken implements Store.
func (m *MemoryStore) RotateRefreshToken(_ context.Context, oldHash string, at time.Time, next *RefreshToken) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	old, ok := m.refresh[oldHash]
	if !ok {
		return ErrNotFound
	}
	if !old.RotatedAt.IsZero() {
		return ErrRefreshTokenRotated
	}
	old.RotatedAt = at
	old.Successor = next.Hash
	m.refresh[next.Hash] = cloneRefresh(next)
	m.retired[old.GrantID] = append(m.retired[old.GrantID], oldHash)
	return nil
}

// PruneRefreshTokens implements RefreshTokenPruner.
func (m *MemoryStore) PruneRefreshTokens(_ context.Context, grantID string, keep int) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	keep = max(keep, 0)
	hashes := m.retired[grantID]
	if len(hashes) <= keep {
		return nil
	}
	drop := len(hashes) - keep
	for _, h := range hashes[:drop] {
		if t, ok := m.refresh[h]; ok && !t.RotatedAt.IsZero() && t.GrantID == grantID {
			delete(m.refresh, h)
		}
	}
	m.retired[grantID] = slices.Clone(hashes[drop:])
	return nil
}

// SaveAccessToken implements Store.
func (m *MemoryStore) SaveAccessToken(_ context.Context, t *AccessToken) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	nt := *t
	nt.Scopes = slices.Clone(t.Scopes)
	m.access[t.JTI] = &nt
	return nil
}

// AccessToken implements Store.
func (m *MemoryStore) AccessToken(_ context.Context, jti string) (*AccessToken, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	t, ok := m.access[jti]
	if !ok {
		return nil, ErrNotFound
	}
	nt := *t
	nt.Scopes = slices.Clone(t.Scopes)
	return &nt, nil
}

// RevokeAccessToken implements Store.
func (m *MemoryStore) RevokeAccessToken(_ context.Context, jti string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	t, ok := m.access[jti]
	if !ok {
		return ErrNotFound
	}
	t.Revoked = true
	return nil
}

func cloneKeys(k *SigningKeys) *SigningKeys {
	return &SigningKeys{Current: slices.Clone(k.Current), Previous: slices.Clone(k.Previous), RotatedAt: k.RotatedAt}
}

// InitKeys implements Store.
func (m *MemoryStore) InitKeys(_ context.Context, k *SigningKeys) (*SigningKeys, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys == nil {
		m.keys = cloneKeys(k)
	}
	return cloneKeys(m.keys), nil
}

// SaveKeys implements Store.
func (m *MemoryStore) SaveKeys(_ context.Context, k *SigningKeys) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.keys = cloneKeys(k)
	return nil
}

// DeleteExpired implements Store.
func (m *MemoryStore) DeleteExpired(_ context.Context, t time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.init()
	for k, c := range m.codes {
		if c.ExpiresAt.Before(t) {
			delete(m.codes, k)
		}
	}
	for k, r := range m.refresh {
		if r.ExpiresAt.Before(t) {
			delete(m.refresh, k)
		}
	}
	for g, hashes := range m.retired {
		hashes = slices.DeleteFunc(hashes, func(h string) bool { return m.refresh[h] == nil })
		if len(hashes) == 0 {
			delete(m.retired, g)
		} else {
			m.retired[g] = hashes
		}
	}
	for k, a := range m.access {
		if a.ExpiresAt.Before(t) {
			delete(m.access, k)
		}
	}
	for k, g := range m.grants {
		if g.ExpiresAt.Before(t) {
			delete(m.grants, k)
		}
	}
	return nil
}
