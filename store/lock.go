package store

import (
	"context"
	"sync"
)

// keyLocks is a set of exclusive locks by key whose waits honour a
// context. A lock is a channel with room for one token: holding the lock
// is having put the token in. Entries are dropped when nobody holds or
// waits for them, so the map does not grow with every key ever locked.
//
// The zero value is ready to use.
type keyLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{}
	refs int // holders and waiters; guarded by keyLocks.mu
}

// lock takes the lock of key, waiting until it is free or ctx is done. If
// ctx is already done it returns ctx.Err() without taking the lock. The
// returned function releases the lock; calling it again does nothing.
func (l *keyLocks) lock(ctx context.Context, key string) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	l.mu.Lock()
	if l.m == nil {
		l.m = make(map[string]*keyLock)
	}
	kl := l.m[key]
	if kl == nil {
		kl = &keyLock{ch: make(chan struct{}, 1)}
		l.m[key] = kl
	}
	kl.refs++
	l.mu.Unlock()

	select {
	case kl.ch <- struct{}{}:
	case <-ctx.Done():
		l.release(key, kl)
		return nil, ctx.Err()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			<-kl.ch
			l.release(key, kl)
		})
	}, nil
}

func (l *keyLocks) release(key string, kl *keyLock) {
	l.mu.Lock()
	defer l.mu.Unlock()
	kl.refs--
	if kl.refs == 0 && l.m[key] == kl {
		delete(l.m, key)
	}
}
