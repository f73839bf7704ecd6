package keystore

import (
	"database/sql"
	"runtime"
	"sync"
	"time"
	"weak"

	"gorm.io/gorm"
)

// DEKs within one transaction.
//
// A DEK loaded inside a transaction the statement did not start (the
// caller's, or the one CreateInBatches opens around its batches) never
// goes into the shared cache: the transaction may roll back. Without more,
// every statement of such a transaction would look its owners up again:
// ten batches, ten profiles queries.
//
// Within the transaction, a DEK it has read can only go away if the
// transaction itself writes the profile row, and a rollback to a savepoint
// can undo such a write. So txKeys remembers, per transaction, the DEKs
// loaded in it and serves them to its later statements, and serves
// nothing more once the transaction has written a profile through GORM:
// the plugin creating a DEK, the app creating, updating or deleting a
// Profile, or a shred. Profile rows changed by raw SQL in the same
// transaction are not seen (as for the shared cache, within
// Config.CacheTTL). DEKs are served for at most CacheTTL; an entry lives as
// long as its transaction object.
type txKeys struct {
	mu  sync.Mutex
	m   map[any]*txEntry // weak pointer to the transaction -> its entry
	max int              // entries with DEKs; an entry that only says "disabled" is always kept
	per int              // DEKs per entry: a transaction over many owners keeps at most this many
	ttl time.Duration
	now func() time.Time
}

type txEntry struct {
	keys     map[any]*Key
	disabled bool      // the transaction wrote profiles: serve nothing, for its whole life
	expires  time.Time // when keys must be looked up again
}

func newTxKeys(max, per int, ttl time.Duration) *txKeys {
	return &txKeys{m: map[any]*txEntry{}, max: max, per: per, ttl: ttl, now: time.Now}
}

// keyOf returns a key for the transaction pool that does not keep it
// alive, and a function that removes the pool's entry once the pool is
// collected; ok is false for a pool the cache does not know. An entry
// therefore lives exactly as long as its transaction object: it is never
// evicted or expired while the transaction may still run statements, so
// the fact that a transaction wrote profiles is never forgotten.
func (t *txKeys) keyOf(pool gorm.ConnPool) (key any, watch func(), ok bool) {
	// GORM wraps a transaction in a new *gorm.PreparedStmtTX for every
	// prepared statement session of it: the entry belongs to the *sql.Tx
	// underneath, so that all of them share it.
	for {
		ps, ok := pool.(*gorm.PreparedStmtTX)
		if !ok || ps == nil {
			break
		}
		pool = ps.Tx
	}
	p, ok := pool.(*sql.Tx)
	if !ok || p == nil {
		return nil, nil, false
	}
	k := weak.Make(p)
	return k, func() { runtime.AddCleanup(p, t.drop, any(k)) }, true
}

func (t *txKeys) drop(key any) {
	t.mu.Lock()
	delete(t.m, key)
	t.mu.Unlock()
}

// entry returns the entry of pool, creating it if create (and, unless
// force, only while fewer than max entries exist); nil if there is none or
// the cache is off. Callers hold t.mu.
func (t *txKeys) entry(pool gorm.ConnPool, create, force bool) *txEntry {
	if t.max <= 0 || t.ttl <= 0 {
		return nil
	}
	key, watch, ok := t.keyOf(pool)
	if !ok {
		return nil
	}
	now := t.now()
	if e, ok := t.m[key]; ok {
		if !now.Before(e.expires) {
			clear(e.keys)
			e.expires = now.Add(t.ttl)
		}
		return e
	}
	if !create || (!force && len(t.m) >= t.max) {
		return nil
	}
	e := &txEntry{keys: map[any]*Key{}, expires: now.Add(t.ttl)}
	t.m[key] = e
	watch()
	return e
}

// fill puts in keys the DEKs the transaction loaded for owners, and
// returns the owners it had none for.
func (t *txKeys) fill(pool gorm.ConnPool, owners []any, keys map[any]*Key) []any {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(pool, false, false)
	if e == nil || e.disabled || len(e.keys) == 0 {
		return owners
	}
	rest := owners[:0]
	for _, o := range owners {
		if k, ok := e.keys[o]; ok {
			keys[o] = k
		} else {
			rest = append(rest, o)
		}
	}
	return rest
}

// record notes the DEKs a statement of the transaction loaded.
func (t *txKeys) record(pool gorm.ConnPool, loaded map[any]*Key) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(pool, true, false)
	if e == nil || e.disabled {
		return
	}
	for o, k := range loaded {
		if len(e.keys) >= t.per {
			return
		}
		e.keys[o] = k
	}
}

// disable stops serving DEKs in the transaction: it wrote profiles.
func (t *txKeys) disable(pool gorm.ConnPool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.entry(pool, true, true); e != nil {
		e.disabled = true
		clear(e.keys)
	}
}

// forget drops o from every transaction (its DEK was shredded).
func (t *txKeys) forget(o any) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.m {
		delete(e.keys, o)
	}
}

// forgetAll drops every owner from every transaction.
func (t *txKeys) forgetAll() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, e := range t.m {
		clear(e.keys)
	}
}
