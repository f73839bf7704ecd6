package envelope

import (
	"fmt"
	"reflect"
	"slices"
	"strings"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// onConflict encrypts plain values in OnConflict DoUpdates assignments and
// refuses assignments that would copy a plain column into an encrypted one.
//
// Why it rewrites the clause: GORM renders DO UPDATE assignments without
// the serializer, so a literal would be sent, and stored, as plaintext.
// The hook replaces the statement's ON CONFLICT clause with a copy whose
// literal values are serializer values sealed for the statement's owner
// (checkUpsert has made sure the row they land in is that owner's), and
// afterWrite puts the caller's clause back, so the *gorm.DB the caller
// keeps never holds tokens.
func (c *collector) onConflict() {
	cl, ok := c.db.Statement.Clauses["ON CONFLICT"]
	if !ok {
		return
	}
	oc, ok := cl.Expression.(clause.OnConflict)
	if !ok {
		return
	}
	m := c.m
	// An index column is assigned only from the inserted row, with its
	// source: alone, it would no longer match the row's value. (Checked
	// before anything else, so that the rule holds for every upsert, even
	// one whose DO UPDATE can never run.)
	for _, a := range oc.DoUpdates {
		if bi := m.idxByDB[a.Column.Name]; bi != nil {
			col, ok := a.Value.(clause.Column)
			if !ok || !strings.EqualFold(col.Table, "excluded") || col.Name != a.Column.Name || !assignedFromExcluded(oc.DoUpdates, bi.src.f.DBName) {
				c.fail(errIndexWrite(m, bi))
				return
			}
		}
	}
	if len(c.self) > 0 && !c.cannotConflict(oc) {
		// A row the insert skips or turns into an update gets no id of
		// its own, or (MySQL) a wrong one: its values cannot be sealed.
		c.fail(&FieldError{Model: m.name, Err: fmt.Errorf("%w: an upsert of a self-owned row needs its id (the owner) set by the app", ErrUnsafe)})
		return
	}
	if len(c.self) > 0 {
		// No conflict can happen, so DO UPDATE never runs: drop it rather
		// than send its values (unsealed: there is no owner yet).
		if !oc.DoNothing {
			stmt := c.db.Statement
			orig := cl
			ncl := cl
			ncl.Expression = clause.OnConflict{Columns: oc.Columns, DoNothing: true}
			stmt.Clauses["ON CONFLICT"] = ncl
			c.edits = append(c.edits, edit{undo: func() { stmt.Clauses["ON CONFLICT"] = orig }})
		}
		return
	}
	if oc.DoNothing || (len(oc.DoUpdates) == 0 && !oc.UpdateAll) {
		return
	}
	if !c.checkUpsert() {
		return
	}
	var owner any
	ownerKnown := false
	for _, it := range c.items {
		if !ownerKnown {
			owner, ownerKnown = it.owner, true
		} else if owner != it.owner {
			owner = nil
		}
	}
	if !ownerKnown {
		owner = c.defOwner
	}
	changed := false
	set := make([]clause.Assignment, len(oc.DoUpdates))
	copy(set, oc.DoUpdates)
	assigned := map[string]bool{}
	for _, a := range set {
		assigned[a.Column.Name] = true
	}
	for i, a := range set {
		if m.idxByDB[a.Column.Name] != nil {
			continue // checked above
		}
		ef := m.byDB[a.Column.Name]
		if ef == nil {
			continue
		}
		if col, ok := a.Value.(clause.Column); ok {
			if strings.EqualFold(col.Table, "excluded") && m.byDB[col.Name] != nil {
				// The source comes from the inserted row: so do its
				// indexes, which the insert computed.
				for _, bi := range ef.idx {
					if !assigned[bi.f.DBName] {
						assigned[bi.f.DBName] = true
						set = append(set, clause.Assignment{Column: clause.Column{Name: bi.f.DBName}, Value: clause.Column{Table: "excluded", Name: bi.f.DBName}})
						changed = true
					}
				}
				continue
			}
			c.fail(&FieldError{Model: m.name, Field: ef.f.Name, Err: fmt.Errorf("%w: ON CONFLICT would copy column %q into an encrypted column", ErrUnsafe, col.Name)})
			continue
		}
		if len(ef.idx) > 0 {
			c.fail(&FieldError{Model: m.name, Field: ef.f.Name, Err: fmt.Errorf("%w: ON CONFLICT can assign a field with a blind index only from the inserted row (clause.AssignmentColumns)", ErrUnsafe)})
			continue
		}
		plain, isNil, _, err := mapPlain(a.Value)
		if err != nil {
			c.fail(&FieldError{Model: m.name, Field: ef.f.Name, Err: err})
			continue
		}
		if isNil {
			continue
		}
		if owner == nil {
			c.fail(&FieldError{Model: m.name, Field: ef.f.Name, Err: fmt.Errorf("%w: an ON CONFLICT assignment needs the rows of one owner", ErrNoOwner)})
			continue
		}
		tmp := reflect.New(c.db.Statement.Schema.ModelType).Elem()
		if err := m.owner.Set(c.db.Statement.Context, tmp, owner); err != nil {
			c.fail(&FieldError{Model: m.name, Field: ef.f.Name, Err: fmt.Errorf("%w: %v", ErrNoOwner, err)})
			continue
		}
		fv := setPlain(ef.f, tmp, ef.kind, plain)
		c.items = append(c.items, item{owner: owner, m: m, f: ef.f, plain: plain, addr: addrOf(fv), enc: ef})
		i := i
		c.edits = append(c.edits, edit{f: ef.f, tmp: tmp, put: func(nv any) { set[i].Value = nv }})
		changed = true
	}
	if changed {
		orig := cl
		noc := oc
		noc.DoUpdates = set
		ncl := cl
		ncl.Expression = noc
		stmt := c.db.Statement
		stmt.Clauses["ON CONFLICT"] = ncl
		c.edits = append(c.edits, edit{undo: func() { stmt.Clauses["ON CONFLICT"] = orig }})
	}
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
	if m.rowKey != nil && touchesEnc && !c.upsertKeepsRow(oc, as) {
		return false
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
	target := columnNames(oc.Columns)
	if oc.OnConstraint != "" {
		target = []string{oc.OnConstraint}
	}
	c.fail(&FieldError{Model: m.name, Err: fmt.Errorf("%w: ON CONFLICT (%s) does not determine the owner: the row it updates may belong to another owner; add %s to the conflict target, or update the owner and every encrypted column from the inserted row (see docs/security-model.md)", ErrUnsafe, strings.Join(target, ", "), m.owner.DBName)})
	return false
}

// upsertKeepsRow refuses, for a model whose values are bound to their
// row, an upsert whose DO UPDATE could land a value in a row other than
// the one it was sealed for: the conflict must be on the primary key (on
// MySQL, which updates on any unique key, the model must have no other),
// and every encrypted column must come from the inserted row.
func (c *collector) upsertKeepsRow(oc clause.OnConflict, as map[string]assignKind) bool {
	m := c.m
	for i := range m.fields {
		if k := as[m.fields[i].f.DBName]; k != 0 && k != assignSame {
			c.fail(&FieldError{Model: m.name, Field: m.fields[i].f.Name, Err: fmt.Errorf("%w: model %s binds its values to their row (envelope:\"row\"): ON CONFLICT may assign an encrypted column only from the inserted row (excluded.%s)", ErrUnsafe, m.name, m.fields[i].f.DBName)})
			return false
		}
	}
	var ok bool
	if c.db.Dialector.Name() == "mysql" {
		ok = len(m.uniqueKeys) == 0
	} else {
		ok = oc.OnConstraint == "" && slices.Equal(columnNames(oc.Columns), []string{m.rowKey.DBName})
	}
	if !ok {
		c.fail(&FieldError{Model: m.name, Err: fmt.Errorf("%w: model %s binds its values to their row (envelope:\"row\"): an upsert that updates encrypted columns must conflict on the primary key alone (on MySQL, the model may have no other unique key)", ErrUnsafe, m.name)})
	}
	return ok
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

// targetDeterminesOwner reports whether a row that conflicts with an
// inserted row always has the inserted row's owner: its conflict target
// contains the owner column, or is a primary key no inserted row sets.
// MySQL ignores the target and updates on any
// unique key, so there every unique key the model declares must contain
// the owner column (a primary key counts unless every inserted row leaves
// it to the database).
func (c *collector) targetDeterminesOwner(oc clause.OnConflict) bool {
	stmt := c.db.Statement
	if c.db.Dialector.Name() != "mysql" {
		if oc.OnConstraint != "" {
			return false
		}
		cols := columnNames(oc.Columns)
		// A conflict on a primary key that every row leaves to the
		// database cannot happen (GORM's association upserts).
		return slices.Contains(cols, c.m.owner.DBName) || slices.Equal(cols, stmt.Schema.PrimaryFieldDBNames) && pkLeftToDB(stmt)
	}
	if !pkLeftToDB(stmt) && !slices.Contains(stmt.Schema.PrimaryFieldDBNames, c.m.owner.DBName) {
		return false
	}
	return c.otherKeysHoldOwner()
}

// otherKeysHoldOwner reports whether every unique key the model declares
// besides its primary key contains the owner column: on MySQL, which
// updates on any unique key, none of them can land an upsert in a row of
// another owner.
func (c *collector) otherKeysHoldOwner() bool {
	for _, k := range c.m.uniqueKeys {
		if !slices.Contains(k, c.m.owner.DBName) {
			return false
		}
	}
	return true
}

// columnNames returns the names of cols.
func columnNames(cols []clause.Column) []string {
	out := make([]string, 0, len(cols))
	for _, col := range cols {
		out = append(out, col.Name)
	}
	return out
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
		if !c.otherKeysHoldOwner() {
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
		return len(c.m.uniqueKeys) == 0
	}
	cols := columnNames(oc.Columns)
	return len(cols) == 0 || slices.Equal(cols, stmt.Schema.PrimaryFieldDBNames)
}

// assignedFromExcluded reports whether set assigns column col from the
// inserted row (excluded.col).
func assignedFromExcluded(set []clause.Assignment, col string) bool {
	for _, a := range set {
		if v, ok := a.Value.(clause.Column); ok && a.Column.Name == col && strings.EqualFold(v.Table, "excluded") && v.Name == col {
			return true
		}
	}
	return false
}
