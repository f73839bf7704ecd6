package envelope

import (
	"reflect"
	"sync"
	"time"

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
// Config.CacheTTL). An entry lives for at most CacheTTL.
type txKeys struct {
	mu  sync.Mutex
	m   map[gorm.ConnPool]*txEntry
	max int
	ttl time.Duration
	now func() time.Time
}

type txEntry struct {
	keys     map[any]*ownerKey
	disabled bool // the transaction wrote profiles: serve nothing
	expires  time.Time
}

func newTxKeys(max int, ttl time.Duration) *txKeys {
	return &txKeys{m: map[gorm.ConnPool]*txEntry{}, max: max, ttl: ttl, now: time.Now}
}

// usable reports whether pool can key an entry: a pointer (a *sql.Tx or a
// wrapper of one), compared by identity.
func usablePool(pool gorm.ConnPool) bool {
	return pool != nil && reflect.TypeOf(pool).Kind() == reflect.Pointer
}

// entry returns the live entry of pool, creating it if create; nil if
// there is none or caching is off. Callers hold t.mu.
func (t *txKeys) entry(pool gorm.ConnPool, create bool) *txEntry {
	if t.max <= 0 || t.ttl <= 0 || !usablePool(pool) {
		return nil
	}
	now := t.now()
	if e, ok := t.m[pool]; ok {
		if now.Before(e.expires) {
			return e
		}
		delete(t.m, pool)
	}
	if !create {
		return nil
	}
	if len(t.m) >= t.max {
		for p, e := range t.m { // drop the expired, else any one
			if !now.Before(e.expires) {
				delete(t.m, p)
			}
		}
		for p := range t.m {
			if len(t.m) < t.max {
				break
			}
			delete(t.m, p)
		}
	}
	e := &txEntry{keys: map[any]*ownerKey{}, expires: now.Add(t.ttl)}
	t.m[pool] = e
	return e
}

// get returns the DEK the transaction loaded for o.
func (t *txKeys) get(pool gorm.ConnPool, o any) (*ownerKey, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(pool, false)
	if e == nil || e.disabled {
		return nil, false
	}
	k, ok := e.keys[o]
	return k, ok
}

// record notes the DEKs a statement of the transaction loaded.
func (t *txKeys) record(pool gorm.ConnPool, loaded map[any]*ownerKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(pool, true)
	if e == nil || e.disabled {
		return
	}
	for o, k := range loaded {
		e.keys[o] = k
	}
}

// disable stops serving DEKs in the transaction: it wrote profiles.
func (t *txKeys) disable(pool gorm.ConnPool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.entry(pool, true); e != nil {
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

// profileWrite disables the transaction's DEKs when a statement writes
// the Profile model inside a transaction it did not start.
func (p *Plugin) profileWrite(db *gorm.DB) {
	stmt := db.Statement
	if p.prof == nil || !(stmt.Schema != nil && stmt.Schema.ModelType == p.prof.Type || stmt.Table == p.prof.Table) {
		return
	}
	if modeOf(db) == txForeign {
		p.txKeys.disable(stmt.ConnPool)
	}
}
