package auth

import (
	"fmt"
	"sync"
	"sync/atomic"
)

// Store holds the current Set and swaps it on reload (SIGHUP re-reads BRIDGE_TOKENS_FILE).
// It is safe for concurrent use: requests read the set without locking while a reload
// builds the next one.
type Store struct {
	cur atomic.Pointer[Set]
	// reload serialises Reload, so two reloads racing cannot store an older file's set
	// after a newer one.
	reload sync.Mutex
}

// NewStore returns a store holding initial; nil holds an empty set.
func NewStore(initial *Set) *Store {
	if initial == nil {
		initial = &Set{}
	}
	s := &Store{}
	s.cur.Store(initial)
	return s
}

// Current returns the set in force. Never nil.
func (s *Store) Current() *Set {
	return s.cur.Load()
}

// Reload re-reads the tokens file at path and makes it, merged with static when static is
// non-nil (the BRIDGE_TOKEN set), the current set. On error the current set is kept and
// the error returned, so a bad edit of the file never locks every caller out.
func (s *Store) Reload(path string, static *Set) error {
	s.reload.Lock()
	defer s.reload.Unlock()
	next, err := Load(path)
	if err != nil {
		return err
	}
	if static != nil {
		if next, err = Merge(next, static); err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
	}
	s.cur.Store(next)
	return nil
}
