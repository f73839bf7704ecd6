package envelope

import (
	"database/sql"
	"runtime"
	"sync"
	"time"
	"weak"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
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
	keys     map[any]*ownerKey
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
	e := &txEntry{keys: map[any]*ownerKey{}, expires: now.Add(t.ttl)}
	t.m[key] = e
	watch()
	return e
}

// fill puts in keys the DEKs the transaction loaded for owners, and
// returns the owners it had none for.
func (t *txKeys) fill(pool gorm.ConnPool, owners []any, keys map[any]*ownerKey) []any {
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
func (t *txKeys) record(pool gorm.ConnPool, loaded map[any]*ownerKey) {
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

// profileWrite disables the transaction's DEKs when a statement writes
// the Profile model inside a transaction it did not start.
func (p *Plugin) profileWrite(db *gorm.DB) {
	stmt := db.Statement
	if !p.isProfile(stmt) {
		return
	}
	if modeOf(db) == txForeign {
		p.txKeys.disable(stmt.ConnPool)
	}
}

func (p *Plugin) isProfile(stmt *gorm.Statement) bool {
	return p.prof != nil && (stmt.Schema != nil && stmt.Schema.ModelType == p.prof.Type || stmt.Table == p.prof.Table)
}

// profileDeleted forgets what this process cached for the owners whose
// profile rows a delete through GORM removed, once it succeeded: the DEK
// (or the shredded state) of a deleted row must not be served any longer,
// or writes would go on under a DEK that is stored nowhere (or be refused
// with ErrShredded after the owner was started afresh). The next write for
// such an owner creates a new DEK.
//
// The owners are known when the statement's conditions pin the owner
// column (Where(&Profile{UserID: 5}), a map, clause.Eq or clause.IN);
// otherwise (a raw condition, a delete by primary key) every cached owner
// is forgotten: profile deletes are rare, and the cost is one lookup per
// owner on its next use.
//
// This runs after GORM's commit of a transaction it started, but inside
// the caller's transaction it runs at once, when the statement is done,
// for GORM tells a plugin nothing of that transaction's commit. Caveat:
// until the caller commits, a statement outside the transaction still
// reads the row as it was committed, and may cache that again (the old DEK
// or the tombstone) for up to Config.CacheTTL; the transaction's own later
// statements would then be served it from the cache too. A delete that
// rolls back only costs the lookups. Other processes, and profile rows
// deleted by raw SQL, are not seen: they keep a cached DEK for up to
// Config.CacheTTL, as after Shred.
//
// A soft delete (a Profile with gorm.DeletedAt) keeps the row, and the
// plugin's own lookups go on finding its DEK or tombstone: a soft delete
// changes nothing about the owner's keys, and only Unscoped().Delete starts
// an owner afresh.
func (p *Plugin) profileDeleted(db *gorm.DB) {
	stmt := db.Statement
	if db.Error != nil || db.DryRun || db.RowsAffected == 0 || !p.isProfile(stmt) {
		return
	}
	owners, ok := p.deletedOwners(stmt)
	if !ok {
		p.cache.Purge()
		p.txKeys.forgetAll()
		return
	}
	for _, o := range owners {
		p.cache.Delete(o)
		p.txKeys.forget(o)
	}
}

// deletedOwners returns the owners a statement's conditions restrict it
// to: the values of an Eq or IN on the owner column among the conditions
// joined by AND. ok is false when they do not.
func (p *Plugin) deletedOwners(stmt *gorm.Statement) (owners []any, ok bool) {
	c, found := stmt.Clauses["WHERE"]
	if !found {
		return nil, false
	}
	w, isWhere := c.Expression.(clause.Where)
	if !isWhere {
		return nil, false
	}
	exprs := w.Exprs
	if len(exprs) == 1 {
		if and, isAnd := exprs[0].(clause.AndConditions); isAnd {
			exprs = and.Exprs
		}
	}
	// A single-condition Or joins its condition to the others with OR.
	for _, e := range exprs {
		if _, isOr := e.(clause.OrConditions); isOr {
			return nil, false
		}
	}
	pinned := func(col any) bool { return columnOf(stmt.Table, col) == p.prof.Owner.DBName }
	for _, e := range exprs {
		var values []any
		switch x := e.(type) {
		case clause.Eq:
			if !pinned(x.Column) {
				continue
			}
			values = []any{x.Value}
		case clause.IN:
			if !pinned(x.Column) {
				continue
			}
			values = x.Values
		default:
			continue
		}
		str := isStringOwner(p.prof.Owner)
		for _, v := range values {
			// A slice, NULL, zero, or "5" for an integer owner: not the
			// owners as the cache knows them.
			o := normOwnerAny(v)
			if _, isStr := o.(string); o == nil || isStr != str {
				return nil, false
			}
			owners = append(owners, o)
		}
		return owners, true
	}
	return nil, false
}
