package store

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
)

// Memory is a Store that keeps grants and registrations in memory, for
// tests and for hosts that do not persist grants. Its Lock excludes the
// goroutines of this process that share the Memory.
//
// The zero value is an empty store ready to use. A Memory must not be
// copied after first use.
type Memory struct {
	mu     sync.Mutex
	grants map[string]*Grant
	regs   map[regKey]*Registration
	locks  keyLocks
}

type regKey struct{ issuer, redirectURI string }

var _ Store = (*Memory)(nil)

// errNilGrant and errNoKey are returned by Save for grants that cannot be
// stored.
var (
	errNilGrant = errors.New("store: nil grant")
	errNoKey    = errors.New("store: grant has no key")
	errNilReg   = errors.New("store: nil registration")
)

// Load returns a copy of the grant stored under key, or ErrNotFound.
func (m *Memory) Load(ctx context.Context, key string) (*Grant, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	g, ok := m.grants[key]
	if !ok {
		return nil, ErrNotFound
	}
	return g.Clone(), nil
}

// Save stores a copy of g under g.Key, replacing what was there. It stores
// g as given: it does not set UpdatedAt.
func (m *Memory) Save(ctx context.Context, g *Grant) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if g == nil {
		return errNilGrant
	}
	if g.Key == "" {
		return errNoKey
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.grants == nil {
		m.grants = make(map[string]*Grant)
	}
	m.grants[g.Key] = g.Clone()
	return nil
}

// Delete removes the grant under key; deleting nothing is not an error.
func (m *Memory) Delete(ctx context.Context, key string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.grants, key)
	return nil
}

// List returns copies of every grant, in key order.
func (m *Memory) List(ctx context.Context) ([]*Grant, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	gs := make([]*Grant, 0, len(m.grants))
	for _, g := range m.grants {
		gs = append(gs, g.Clone())
	}
	m.mu.Unlock()
	slices.SortFunc(gs, func(a, b *Grant) int { return strings.Compare(a.Key, b.Key) })
	return gs, nil
}

// LoadRegistration returns a copy of the registration for (issuer,
// redirectURI), or ErrNotFound.
func (m *Memory) LoadRegistration(ctx context.Context, issuer, redirectURI string) (*Registration, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	r, ok := m.regs[regKey{issuer, redirectURI}]
	if !ok {
		return nil, ErrNotFound
	}
	return r.Clone(), nil
}

// SaveRegistration stores a copy of r under (r.Issuer, r.RedirectURI),
// replacing what was there.
func (m *Memory) SaveRegistration(ctx context.Context, r *Registration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r == nil {
		return errNilReg
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.regs == nil {
		m.regs = make(map[regKey]*Registration)
	}
	m.regs[regKey{r.Issuer, r.RedirectURI}] = r.Clone()
	return nil
}

// DeleteRegistration implements Store.
func (m *Memory) DeleteRegistration(ctx context.Context, issuer, clientID string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, r := range m.regs {
		if r.Issuer == issuer && r.ClientID == clientID {
			delete(m.regs, k)
		}
	}
	return nil
}

// Lock takes the exclusive lock of key among the users of m, waiting until
// it is free or ctx is done (then it returns ctx.Err()). The returned
// unlock function releases the lock; calling it more than once does
// nothing. The key need not have a grant.
func (m *Memory) Lock(ctx context.Context, key string) (unlock func(), err error) {
	return m.locks.lock(ctx, key)
}
