package envelope

import (
	"fmt"
	"reflect"
	"strconv"
	"sync/atomic"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"
)

// Self-owned rows.
//
// A model whose owner field is its own primary key (a users table that
// encrypts the user's PII) has no owner before the insert assigns the id.
// Its encrypted columns are inserted as NULL ('' where the column is NOT
// NULL), and sealed under the new id's DEK by an UPDATE right after the
// INSERT, in the same transaction, so no other transaction ever sees the
// row without its tokens:
//
//   - in GORM's default transaction, that transaction;
//   - in the caller's transaction (or CreateInBatches'), a savepoint taken
//     before the insert, rolled back if any step fails;
//   - with SkipDefaultTransaction and no transaction, one the plugin
//     begins before the insert and commits after it.

// selfRow is a row of a self-owned model whose id the insert assigns.
type selfRow struct {
	m    *modelMeta
	v    reflect.Value
	vals []selfVal
}

// selfVal is one value of such a row, sealed after the insert.
type selfVal struct {
	ef    *encField
	plain string
	addr  uintptr
}

// selfTx is how the statement's self-owned rows are kept atomic.
type selfTx struct {
	savepoint string        // the savepoint taken in the caller's transaction
	tx        *gorm.DB      // the transaction the plugin began
	pool      gorm.ConnPool // the statement's pool before it
}

var savepoints atomic.Uint64

// deferSelf reports whether row v of model m is self-owned with its id
// left to the insert.
func (c *collector) deferSelf(m *modelMeta, v reflect.Value) bool {
	// Only an insert assigns the id: an update of a row without its id
	// has no owner, and is refused as such.
	return m.selfOwned && !c.update && c.written != nil && !c.db.DryRun && m.ownerOf(v) == nil
}

// beginSelf makes the statement's insert and the sealing after it one
// unit, and notes the rows' field addresses for the serializer. It returns
// false if the statement was refused.
func (c *collector) beginSelf(st *writeState) bool {
	db := c.db
	st.self = c.self
	st.deferred = map[uintptr]*schema.Field{}
	for _, r := range c.self {
		for _, sv := range r.vals {
			if sv.addr == 0 {
				c.p.addErr(db, &FieldError{Model: r.m.name, Field: sv.ef.f.Name, Err: fmt.Errorf("%w: a self-owned row must be passed by pointer so the insert can set its id", ErrNoOwner)})
				return false
			}
			st.deferred[sv.addr] = sv.ef.f
		}
	}
	switch modeOf(db) {
	case keystore.Own:
		// GORM's own transaction: it rolls back on any error.
	case keystore.Foreign:
		name := "envelope_" + strconv.FormatUint(savepoints.Add(1), 10)
		if err := db.Session(&gorm.Session{NewDB: true}).SavePoint(name).Error; err != nil {
			db.AddError(fmt.Errorf("envelope: savepoint: %w", err))
			return false
		}
		st.selfTx = &selfTx{savepoint: name}
	case keystore.None:
		tx := db.Session(&gorm.Session{NewDB: true}).Begin()
		if tx.Error != nil {
			db.AddError(fmt.Errorf("envelope: begin: %w", tx.Error))
			return false
		}
		st.selfTx = &selfTx{tx: tx, pool: db.Statement.ConnPool}
		db.Statement.ConnPool = tx.Statement.ConnPool
		ensureState(db).started = true
	}
	return true
}

// placeholder returns what is inserted for a deferred value: NULL, or ”
// for a NOT NULL column. ok is false if the field is not deferred.
func (st *writeState) placeholder(field *schema.Field, dst reflect.Value) (any, bool) {
	if len(st.deferred) == 0 {
		return nil, false
	}
	a := st.fieldAddr(field, reflect.Indirect(dst))
	if f, ok := st.deferred[a]; !ok || f != field {
		return nil, false
	}
	if field.NotNull {
		return "", true
	}
	return nil, true
}

// sealSelf runs right after the insert: it gives each new id a DEK and
// writes the row's tokens.
func (p *Plugin) sealSelf(db *gorm.DB) {
	ss := stateOf(db)
	if ss == nil || ss.write == nil || len(ss.write.self) == 0 || db.Error != nil {
		return
	}
	st := ss.write
	var owners []any
	seen := map[any]bool{}
	for _, r := range st.self {
		o := r.m.ownerOf(r.v)
		if o == nil {
			p.addErr(db, &FieldError{Model: r.m.name, Err: fmt.Errorf("%w: the insert did not return the row's id", ErrNoOwner)})
			return
		}
		if !seen[o] {
			seen[o] = true
			owners = append(owners, o)
		}
	}
	keys, kerrs, err := p.resolve(db, owners, true)
	if err != nil {
		db.AddError(err)
		return
	}
	base := internal(db) // a new statement for each chain
	for _, r := range st.self {
		if len(r.vals) == 0 {
			continue
		}
		o := r.m.ownerOf(r.v)
		k := keys[o]
		if err := kerrs[o]; err != nil || k == nil || k.Shredded {
			if err == nil {
				err = ErrShredded
			}
			p.addErr(db, &FieldError{Model: r.m.name, Field: r.vals[0].ef.f.Name, Owner: o, Err: err})
			return
		}
		set := make(map[string]any, len(r.vals))
		for _, sv := range r.vals {
			tok, err := r.m.sealOne(k, sv.ef, o, "", []byte(sv.plain))
			if err != nil {
				db.AddError(err)
				return
			}
			if sv.ef.kind == kindBytes {
				set[sv.ef.f.DBName] = []byte(tok)
			} else {
				set[sv.ef.f.DBName] = tok
			}
			for _, bi := range sv.ef.idx {
				bk, ver, err := p.indexKey(db, bi, k)
				if err != nil {
					p.addErr(db, &FieldError{Model: r.m.name, Field: bi.f.Name, Owner: o, Err: err})
					return
				}
				val := bi.value(bk, ver, sv.plain)
				set[bi.f.DBName] = val
				bi.set(r.v, &val)
			}
		}
		pk := r.m.owner
		res := base.Table(db.Statement.Table).
			Where(clause.Eq{Column: clause.Column{Name: pk.DBName}, Value: o}).
			UpdateColumns(set)
		if res.Error != nil {
			db.AddError(fmt.Errorf("envelope: seal %s (owner %v): %w", r.m.name, o, res.Error))
			return
		}
		if res.RowsAffected != 1 {
			p.addErr(db, &FieldError{Model: r.m.name, Owner: o, Err: fmt.Errorf("%w: the inserted row was not found by its id", ErrNoOwner)})
			return
		}
	}
	if p.obs != nil {
		c := fieldCounts{}
		for _, r := range st.self {
			for _, sv := range r.vals {
				c.add(r.m, sv.ef, 1)
			}
		}
		for k, n := range c {
			p.obs.ValuesEncrypted(k.m.name, k.ef.f.Name, n)
		}
	}
}

// endSelf ends what beginSelf started: it releases or rolls back the
// savepoint, or commits or rolls back the plugin's transaction.
func (p *Plugin) endSelf(db *gorm.DB, st *writeState) {
	t := st.selfTx
	if t == nil {
		return
	}
	st.selfTx = nil
	switch {
	case t.savepoint != "":
		s := db.Session(&gorm.Session{NewDB: true})
		s.Error = nil // the session would carry the statement's error and run nothing
		if db.Error != nil {
			s.RollbackTo(t.savepoint)
		} else if err := s.Exec("RELEASE SAVEPOINT " + t.savepoint).Error; err != nil {
			db.AddError(fmt.Errorf("envelope: release savepoint: %w", err))
		}
	case t.tx != nil:
		if db.Error != nil {
			t.tx.Rollback()
		} else if err := t.tx.Commit().Error; err != nil {
			db.AddError(fmt.Errorf("envelope: commit: %w", err))
		}
		db.Statement.ConnPool = t.pool
	}
}
