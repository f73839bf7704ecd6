package envelope

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/gorm-envelope/envelope/internal/keystore"
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

// sameValue reports a == b without panicking on uncomparable values.
func sameValue(a, b any) bool {
	if a == nil || b == nil || reflect.TypeOf(a) != reflect.TypeOf(b) || !reflect.TypeOf(a).Comparable() {
		return false
	}
	return a == b
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
	st, _ := db.Statement.Context.Value(stateKey{}).(*writeState)
	if st == nil || st.db.Statement != db.Statement || st.pinned == nil || db.Error != nil || db.RowsAffected != 0 {
		return
	}
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
	db.AddError(&FieldError{Model: st.m.name, Field: st.m.owner.Name, Owner: st.pinned, Err: fmt.Errorf("%w: the row is stored under another owner than the model's: reload it (the update was not made)", ErrUnsafe)})
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

// assignKind says what an upsert's DO UPDATE assigns to a column.
type assignKind uint8

const (
	assignSame    assignKind = iota + 1 // excluded.<the same column>: the inserted row's value
	assignLiteral                       // a plain value
	assignOther                         // another column or an expression
)

// upsertAssigns returns what the statement's ON CONFLICT DO UPDATE
// assigns, and its conflict target; nil if it updates nothing. UpdateAll
// is expanded the way GORM's ConvertToCreateValues expands it.
func (c *collector) upsertAssigns() (map[string]assignKind, clause.OnConflict, bool) {
	stmt := c.db.Statement
	cl, ok := stmt.Clauses["ON CONFLICT"]
	if !ok {
		return nil, clause.OnConflict{}, false
	}
	oc, ok := cl.Expression.(clause.OnConflict)
	if !ok || oc.DoNothing || (len(oc.DoUpdates) == 0 && !oc.UpdateAll) {
		return nil, oc, false
	}
	as := map[string]assignKind{}
	if oc.UpdateAll {
		written := createWritten(stmt)
		for _, f := range stmt.Schema.Fields {
			if f.DBName == "" || f.PrimaryKey || !f.Creatable || !written(f) || f.AutoCreateTime > 0 {
				continue
			}
			if f.HasDefaultValue && f.DefaultValueInterface == nil && !strings.EqualFold(f.DefaultValue, "NULL") {
				continue
			}
			as[f.DBName] = assignSame
		}
	}
	for _, a := range oc.DoUpdates {
		k := assignOther
		switch v := a.Value.(type) {
		case clause.Column:
			if strings.EqualFold(v.Table, "excluded") && v.Name == a.Column.Name {
				k = assignSame
			}
		default:
			if _, _, ok := plainOf(v); ok {
				k = assignLiteral
			} else if _, _, _, err := mapPlain(v); err == nil {
				k = assignLiteral
			}
		}
		as[a.Column.Name] = k
	}
	if len(oc.Columns) == 0 {
		for _, f := range stmt.Schema.PrimaryFields {
			oc.Columns = append(oc.Columns, clause.Column{Name: f.DBName})
		}
	}
	return as, oc, true
}

// checkUpsert refuses an upsert that could leave a conflicting row's
// encrypted values under another owner's DEK.
func (c *collector) checkUpsert() bool {
	m := c.m
	as, oc, ok := c.upsertAssigns()
	if !ok {
		return true
	}
	ownerKind := as[m.owner.DBName]
	if ownerKind == assignSame && inAssociationReplace() {
		c.fail(&FieldError{Model: m.name, Field: m.owner.Name, Err: fmt.Errorf("%w: Association Replace would clear the owner of the rows it replaces: Unscoped().Clear() then Append, in one transaction (see docs/security-model.md)", ErrUnsafe)})
		return false
	}
	touchesEnc, rewritten := false, true
	for i := range m.fields {
		k := as[m.fields[i].f.DBName]
		if k != 0 {
			touchesEnc = true
		}
		if k != assignSame && k != assignLiteral {
			rewritten = false
		}
	}
	if ownerKind == 0 && !touchesEnc {
		return true
	}
	if ownerKind != 0 && ownerKind != assignSame {
		c.fail(&FieldError{Model: m.name, Field: m.owner.Name, Err: fmt.Errorf("%w: ON CONFLICT may set the owner column only from the inserted row (excluded.%s)", ErrUnsafe, m.owner.DBName)})
		return false
	}
	if c.targetDeterminesOwner(oc) {
		return true
	}
	if ownerKind == assignSame && rewritten {
		// The conflicting row takes the inserted row's owner and a value
		// sealed for it in every encrypted column.
		return true
	}
	if ok, err := c.conflictsKeepOwner(oc); err != nil {
		c.fail(err)
		return false
	} else if ok {
		return true
	}
	target := make([]string, 0, len(oc.Columns))
	for _, col := range oc.Columns {
		target = append(target, col.Name)
	}
	if oc.OnConstraint != "" {
		target = []string{oc.OnConstraint}
	}
	c.fail(&FieldError{Model: m.name, Err: fmt.Errorf("%w: ON CONFLICT (%s) does not determine the owner: the row it updates may belong to another owner; add %s to the conflict target, or update the owner and every encrypted column from the inserted row (see docs/security-model.md)", ErrUnsafe, strings.Join(target, ", "), m.owner.DBName)})
	return false
}

// targetDeterminesOwner reports whether a row that conflicts with an
// inserted row always has the inserted row's owner: its conflict target
// contains the owner column, or is a primary key no inserted row sets.
// MySQL ignores the target and updates on any
// unique key, so there every unique key the model declares must contain
// the owner column (a primary key counts unless every inserted row leaves
// it to the database).
func (c *collector) targetDeterminesOwner(oc clause.OnConflict) bool {
	stmt := c.db.Statement
	owner := c.m.owner.DBName
	has := func(cols []string) bool {
		for _, col := range cols {
			if col == owner {
				return true
			}
		}
		return false
	}
	if c.db.Dialector.Name() != "mysql" {
		if oc.OnConstraint != "" {
			return false
		}
		cols := make([]string, 0, len(oc.Columns))
		for _, col := range oc.Columns {
			cols = append(cols, col.Name)
		}
		// A conflict on a primary key that every row leaves to the
		// database cannot happen (GORM's association upserts).
		return has(cols) || slices.Equal(cols, stmt.Schema.PrimaryFieldDBNames) && pkLeftToDB(stmt)
	}
	var keys [][]string
	if !pkLeftToDB(stmt) {
		keys = append(keys, stmt.Schema.PrimaryFieldDBNames)
	}
	for _, f := range stmt.Schema.Fields {
		if f.Unique && !f.PrimaryKey {
			keys = append(keys, []string{f.DBName})
		}
	}
	for _, idx := range stmt.Schema.ParseIndexes() {
		if idx.Class == "UNIQUE" || idx.Option == "UNIQUE" {
			cols := make([]string, 0, len(idx.Fields))
			for _, f := range idx.Fields {
				cols = append(cols, f.DBName)
			}
			keys = append(keys, cols)
		}
	}
	for _, k := range keys {
		if !has(k) {
			return false
		}
	}
	return true
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

// conflictsKeepOwner handles an upsert on the primary key whose rows set
// their ids (GORM's upsert of loaded associations, Save of rows): it
// looks up, and locks, the rows the insert can conflict with, and reports
// whether each has the owner of the row that would update it. Then the
// DO UPDATE keeps every row's owner. Other targets are not looked up.
func (c *collector) conflictsKeepOwner(oc clause.OnConflict) (bool, error) {
	stmt := c.db.Statement
	s := stmt.Schema
	if len(s.PrimaryFields) != 1 || c.m.selfOwned || oc.OnConstraint != "" {
		return false, nil
	}
	pf := s.PrimaryFields[0]
	if c.db.Dialector.Name() == "mysql" {
		// Any other unique key must determine the owner on its own.
		if !c.targetDeterminesOwnerWithout(pf) {
			return false, nil
		}
	} else if len(oc.Columns) != 1 || oc.Columns[0].Name != pf.DBName {
		return false, nil
	}
	want := map[any]any{} // id -> the inserted row's owner
	var ids []any
	var rowsErr bool
	visit := func(v reflect.Value) {
		v = reflect.Indirect(v)
		if v.Kind() != reflect.Struct {
			rowsErr = true
			return
		}
		id, zero := pf.ValueOf(stmt.Context, v)
		if zero {
			return // left to the database: cannot conflict
		}
		k := fmt.Sprint(id)
		if _, dup := want[k]; !dup {
			ids = append(ids, id)
		}
		want[k] = c.m.ownerOf(v)
	}
	rv := reflect.Indirect(stmt.ReflectValue)
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		for i := 0; i < rv.Len(); i++ {
			visit(rv.Index(i))
		}
	default:
		visit(rv)
	}
	if rowsErr {
		return false, nil
	}
	if len(ids) == 0 {
		return true, nil
	}
	tx := c.db.Session(&gorm.Session{NewDB: true})
	q := tx.Table(stmt.Table).
		Clauses(clause.Select{Columns: []clause.Column{{Name: pf.DBName}, {Name: c.m.owner.DBName}}}).
		Where(clause.IN{Column: clause.Column{Name: pf.DBName}, Values: ids})
	if c.db.Dialector.Name() == "sqlite" {
		if err := keystore.LockSQLite(tx, stmt.Table, pf.DBName); err != nil {
			return false, err
		}
	} else {
		q = q.Clauses(clause.Locking{Strength: clause.LockingStrengthUpdate})
	}
	rows, err := q.Rows()
	if err != nil {
		return false, keystore.ConflictErr(fmt.Errorf("envelope: look up the rows an upsert updates: %w", err))
	}
	defer rows.Close()
	for rows.Next() {
		var id, owner any
		if err := rows.Scan(&id, &owner); err != nil {
			return false, err
		}
		if b, ok := id.([]byte); ok {
			id = string(b)
		}
		if want[fmt.Sprint(id)] != ownerScan(c.m, owner) {
			return false, nil
		}
	}
	return true, rows.Err()
}

// targetDeterminesOwnerWithout reports whether, on MySQL, every unique key
// the model declares other than the primary key pf contains the owner.
func (c *collector) targetDeterminesOwnerWithout(pf *schema.Field) bool {
	s := c.db.Statement.Schema
	owner := c.m.owner.DBName
	for _, f := range s.Fields {
		if f.Unique && !f.PrimaryKey && f.DBName != owner {
			return false
		}
	}
	for _, idx := range s.ParseIndexes() {
		if idx.Class != "UNIQUE" && idx.Option != "UNIQUE" {
			continue
		}
		has := false
		for _, f := range idx.Fields {
			has = has || f.DBName == owner
		}
		if !has {
			return false
		}
	}
	return true
}

// cannotConflict reports whether no row the statement inserts can meet a
// conflict: its target is a primary key every row leaves to the database,
// and (MySQL, which checks every unique key) the model declares no other
// unique key.
func (c *collector) cannotConflict(oc clause.OnConflict) bool {
	stmt := c.db.Statement
	if !pkLeftToDB(stmt) || oc.OnConstraint != "" {
		return false
	}
	if c.db.Dialector.Name() == "mysql" {
		for _, f := range stmt.Schema.Fields {
			if f.Unique && !f.PrimaryKey {
				return false
			}
		}
		for _, idx := range stmt.Schema.ParseIndexes() {
			if idx.Class == "UNIQUE" || idx.Option == "UNIQUE" {
				return false
			}
		}
		return true
	}
	cols := make([]string, 0, len(oc.Columns))
	for _, col := range oc.Columns {
		cols = append(cols, col.Name)
	}
	return len(cols) == 0 || slices.Equal(cols, stmt.Schema.PrimaryFieldDBNames)
}
