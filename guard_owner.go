package envelope

import (
	"fmt"
	"reflect"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"
)

// Owner integrity.
//
// After any statement the plugin lets through, every encrypted value of
// every row the statement touched must open under the DEK of the row's
// owner as stored after the statement. A write statement therefore either
// keeps each row's owner and seals its values under that owner, or
// rewrites the owner together with every encrypted column (a move that
// re-keys the row). Anything else is refused before any SQL is sent:
//
//   - a partial update that assigns the owner column without assigning
//     every encrypted column (a move, or a clear, that would strand the
//     encrypted values it does not rewrite), unless the value it assigns is
//     the owner the statement's model already holds; the update is then
//     pinned to rows of that owner;
//   - an upsert whose DO UPDATE assigns encrypted columns or the owner,
//     when its conflict target does not determine the owner, unless it
//     rewrites the owner and every encrypted column from the inserted row.
//
// A partial update that seals values under the owner its model holds is
// pinned to that owner (WHERE owner = ?): a row stored under another
// owner is not touched, so no value is ever sealed for the wrong owner.

// writeSet is what one update statement assigns.
type writeSet struct {
	cols     map[string]bool // DB names of the assigned columns
	owner    bool            // the owner column is assigned
	ownerRaw any             // the value assigned to it
}

// createWritten reports, for a Create, whether the field's column is
// written (Select and Omit, as GORM's ConvertToCreateValues applies them).
func createWritten(stmt *gorm.Statement) func(*schema.Field) bool {
	if len(stmt.Selects) == 0 && len(stmt.Omits) == 0 {
		// The common case, without building GORM's map of every column:
		// only fields tagged not to be created are left out.
		return func(f *schema.Field) bool { return f.Creatable }
	}
	sel, restricted := stmt.SelectAndOmitColumns(true, false)
	return func(f *schema.Field) bool {
		v, ok := sel[f.DBName]
		return (ok && v) || (!ok && !restricted)
	}
}

// updateSet returns the columns an update statement assigns, following
// GORM's ConvertToAssignments: every selected key of a map; the selected,
// updatable fields of a struct that are non-zero or selected by name
// (Save selects "*"), less the primary key of the model itself.
func (c *collector) updateSet() writeSet {
	stmt := c.db.Statement
	m := c.m
	ws := writeSet{cols: map[string]bool{}}
	sel, restricted := stmt.SelectAndOmitColumns(false, true)
	pick := func(f *schema.Field) (explicit, ok bool) {
		if v, ok := sel[f.DBName]; ok {
			return v, v
		}
		return false, !restricted
	}
	note := func(f *schema.Field, v any) {
		ws.cols[f.DBName] = true
		if m.owner != nil && f.DBName == m.owner.DBName {
			ws.owner, ws.ownerRaw = true, v
		}
	}
	dest := stmt.Dest
	if mp, ok := dest.(*map[string]any); ok && mp != nil {
		dest = *mp
	}
	if mv, ok := dest.(map[string]any); ok {
		for k, v := range mv {
			f := stmt.Schema.LookUpField(k)
			if f == nil || f.DBName == "" {
				continue
			}
			if _, ok := pick(f); ok {
				note(f, v)
			}
		}
		return ws
	}
	uv := reflect.ValueOf(dest)
	for uv.Kind() == reflect.Pointer && !uv.IsNil() {
		uv = uv.Elem()
	}
	if uv.Kind() != reflect.Struct {
		return ws
	}
	sameModel := uv.CanAddr() && sameValue(stmt.Dest, stmt.Model)
	us := stmt.Schema
	if uv.Type() != stmt.Schema.ModelType {
		am := c.p.metaOfType(c.db, uv.Type())
		if am == nil {
			return ws
		}
		us = am.schema
	}
	for _, dbName := range stmt.Schema.DBNames {
		f := us.LookUpField(dbName)
		if f == nil || f.DBName != dbName {
			continue
		}
		if f.PrimaryKey && sameModel {
			continue // a condition, not an assignment
		}
		explicit, ok := pick(f)
		if !ok || !f.Updatable {
			continue
		}
		fv, isZero := f.ValueOf(stmt.Context, uv)
		if explicit || !isZero {
			note(f, fv)
		}
	}
	return ws
}

// checkUpdate applies the owner rules to an update. It returns false if
// the statement was refused.
func (c *collector) checkUpdate(ws writeSet) bool {
	m := c.m
	encWritten, allEnc := false, true
	for i := range m.fields {
		if ws.cols[m.fields[i].f.DBName] {
			encWritten = true
		} else {
			allEnc = false
		}
	}
	if m.rowKey != nil && ws.cols[m.rowKey.DBName] && !allEnc {
		// The values not rewritten would stay bound to the old key.
		c.fail(&FieldError{Model: m.name, Field: m.rowKey.Name, Err: fmt.Errorf("%w: model %s binds its values to their row (envelope:\"row\"): changing %s needs every encrypted column rewritten in the same update", ErrUnsafe, m.name, m.rowKey.Name)})
		return false
	}
	if !ws.owner {
		if encWritten && c.defOwner != nil && !c.ambig {
			c.pin(c.defOwner)
		}
		return true
	}
	o, known := c.assignedOwner(ws.ownerRaw)
	switch {
	case !known:
		c.fail(&FieldError{Model: m.name, Field: m.owner.Name, Err: fmt.Errorf("%w: the owner column of a model with encrypted fields cannot be assigned an expression", ErrUnsafe)})
		return false
	case allEnc:
		// Every encrypted column is rewritten: the rows are re-keyed for
		// the owner assigned.
		c.defOwner, c.ambig = o, false
		return true
	case o != nil && o == c.defOwner && !c.ambig:
		c.pin(o)
		return true
	}
	what := "move rows to another owner"
	if o == nil {
		what = "clear the owner"
	}
	c.fail(&FieldError{Model: m.name, Field: m.owner.Name, Owner: c.defOwner, Err: fmt.Errorf("%w: a partial update cannot %s: the encrypted fields it does not rewrite would stay under the old owner's DEK (Save the full row, or assign every encrypted field too; see docs/security-model.md)", ErrUnsafe, what)})
	return false
}

// pin restricts an update to the rows of owner, the owner its values are
// sealed for, unless GORM would refuse it as a global update anyway.
func (c *collector) pin(owner any) {
	stmt := c.db.Statement
	if _, ok := stmt.Clauses["WHERE"]; !ok && !c.db.AllowGlobalUpdate && !hasPrimaryKey(stmt) {
		return
	}
	stmt.AddClause(clause.Where{Exprs: []clause.Expression{
		clause.Eq{Column: clause.Column{Table: clause.CurrentTable, Name: c.m.owner.DBName}, Value: owner},
	}})
	c.pinned = owner
}

// checkPinned runs right after a pinned update, before GORM commits its
// transaction: if the update changed no row and the model's row exists
// under another owner (a stale or changed model), the update was not the
// no-op the caller meant, so it is refused (and GORM's transaction, with
// any DEK the statement created, rolled back).
func (p *Plugin) checkPinned(db *gorm.DB) {
	ss := stateOf(db)
	if ss == nil || ss.write == nil || ss.write.pinned == nil || db.Error != nil || db.RowsAffected != 0 {
		return
	}
	st := ss.write
	stmt := db.Statement
	rv := reflect.Indirect(stmt.ReflectValue)
	if rv.Kind() != reflect.Struct || rv.Type() != st.m.schema.ModelType || len(stmt.Schema.PrimaryFields) != 1 {
		return
	}
	pf := stmt.Schema.PrimaryFields[0]
	id, zero := pf.ValueOf(stmt.Context, rv)
	if zero {
		return
	}
	var owners []any
	err := db.Session(&gorm.Session{NewDB: true}).Table(stmt.Table).
		Where(clause.Eq{Column: clause.Column{Name: pf.DBName}, Value: id}).
		Pluck(st.m.owner.DBName, &owners).Error
	if err != nil || len(owners) == 0 || ownerScan(st.m, owners[0]) == st.pinned {
		return
	}
	p.addErr(db, &FieldError{Model: st.m.name, Field: st.m.owner.Name, Owner: st.pinned, Err: fmt.Errorf("%w: the row is stored under another owner than the model's: reload it (the update was not made)", ErrUnsafe)})
}

// assignedOwner normalises a value assigned to the owner column; ok is
// false for a value whose owner cannot be known before the statement runs
// (an expression, a subquery).
func (c *collector) assignedOwner(raw any) (owner any, ok bool) {
	if raw == nil {
		return nil, true
	}
	rv := reflect.ValueOf(raw)
	for rv.Kind() == reflect.Pointer {
		if rv.IsNil() {
			return nil, true
		}
		rv = rv.Elem()
	}
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.String:
	default:
		return nil, false
	}
	tmp := reflect.New(c.db.Statement.Schema.ModelType).Elem()
	if err := c.m.owner.Set(c.db.Statement.Context, tmp, rv.Interface()); err != nil {
		return nil, false
	}
	return c.m.ownerOf(tmp), true
}

// sameValue reports a == b without panicking on uncomparable values.
func sameValue(a, b any) bool {
	if a == nil || b == nil || reflect.TypeOf(a) != reflect.TypeOf(b) || !reflect.TypeOf(a).Comparable() {
		return false
	}
	return a == b
}

// hasPrimaryKey reports whether the statement's model value has a non-zero
// primary key, which GORM turns into a condition.
func hasPrimaryKey(stmt *gorm.Statement) bool {
	rv := reflect.Indirect(stmt.ReflectValue)
	if rv.Kind() != reflect.Struct {
		return rv.Kind() == reflect.Slice && rv.Len() > 0
	}
	for _, f := range stmt.Schema.PrimaryFields {
		if _, zero := f.ValueOf(stmt.Context, rv); !zero {
			return true
		}
	}
	return false
}

// pkLeftToDB reports whether every row the statement inserts leaves its
// single, auto-incremented primary key to the database.
func pkLeftToDB(stmt *gorm.Statement) bool {
	pf := stmt.Schema.PrioritizedPrimaryField
	if pf == nil || len(stmt.Schema.PrimaryFields) != 1 || !pf.AutoIncrement {
		return false
	}
	rv := reflect.Indirect(stmt.ReflectValue)
	zero := func(v reflect.Value) bool {
		_, z := pf.ValueOf(stmt.Context, reflect.Indirect(v))
		return z
	}
	switch rv.Kind() {
	case reflect.Struct:
		return zero(rv)
	case reflect.Slice, reflect.Array:
		for i := 0; i < rv.Len(); i++ {
			if !zero(rv.Index(i)) {
				return false
			}
		}
		return true
	}
	return false
}
