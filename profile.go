package envelope

import (
	"reflect"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// The Profile hooks: the key store is told when a statement writes or
// deletes profile rows through GORM.

// profileWrite disables the transaction's DEKs when a statement writes
// the Profile model inside a transaction it did not start.
func (p *Plugin) profileWrite(db *gorm.DB) {
	stmt := db.Statement
	if !p.isProfile(stmt) {
		return
	}
	if modeOf(db) == keystore.Foreign {
		p.store.ProfilesWritten(stmt.ConnPool)
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
		p.store.ForgetAll()
		return
	}
	for _, o := range owners {
		p.store.Forget(o)
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

// giveProfilesDEKs gives every Profile being created without a DEK a new
// one, bound to the profile's owner under Config.BindDEKs.
func (p *Plugin) giveProfilesDEKs(db *gorm.DB) {
	if p.keys == nil {
		return
	}
	ctx := db.Statement.Context
	var visit func(v reflect.Value)
	visit = func(v reflect.Value) {
		v = reflect.Indirect(v)
		switch v.Kind() {
		case reflect.Slice, reflect.Array:
			for i := 0; i < v.Len(); i++ {
				visit(v.Index(i))
			}
		case reflect.Struct:
			fv, ok := fieldValue(p.prof.DEK, v)
			if !ok || fv.Len() > 0 || !fv.CanSet() {
				return
			}
			var owner any
			if ov, ok := fieldValue(p.prof.Owner, v); ok {
				owner = normOwner(ov)
			}
			if owner == nil && p.store.BindsDEKs() {
				// A bound DEK names its owner, not known yet: the owner's
				// first write gives the row one (the DEK column is NULL).
				return
			}
			d, err := dek.NewDEK()
			if err != nil {
				db.AddError(err)
				return
			}
			enc, err := p.store.Seal(ctx, owner, d)
			clear(d[:])
			if err != nil {
				db.AddError(err)
				return
			}
			fv.SetBytes(enc)
		}
	}
	visit(db.Statement.ReflectValue)
}
