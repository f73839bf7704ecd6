package envelope

import (
	"errors"
	"fmt"
	"reflect"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"
)

// Finding rows by an encrypted value.

// Match returns a condition that holds for the rows whose encrypted field
// equals value, through the field's global blind index (tag
// envelope:"index:F;scope:global"):
//
//	db.Where(envelope.Match("Email", "ada@example.org")).First(&user)
//
// field is the encrypted field (or the index field, to pick one of
// several indexes), by Go name or column. The index's transform is applied
// to value first, so a lower-casing index matches any case. The condition
// filters in SQL, by the index column, under every live version of the
// index key; a caller gets exactly the rows whose decrypted value equals
// value after the transform: the false positives of a truncated index are
// dropped before the caller sees them (docs/security-model.md). It works
// in Where, Or, Not, Preload conditions, Count, Update and Delete, in and
// out of transactions, on a *gorm.DB with the plugin; anywhere else it
// fails the statement with [ErrUnsafe].
func Match(field, value string) clause.Expression {
	return &matchExpr{field: field, value: value}
}

// MatchOwner is [Match] within one owner's rows, through the field's
// per-owner index (scope:owner, the default), or its global index with the
// owner as a second condition.
func MatchOwner(owner any, field, value string) clause.Expression {
	return &matchExpr{field: field, value: value, owner: owner, byOwner: true}
}

type matchExpr struct {
	field, value string
	owner        any
	byOwner      bool
}

// Build runs only when the plugin did not replace the condition: the
// statement is not the plugin's, or the condition sits where the plugin
// does not look (a subquery). It fails the statement, and matches nothing.
func (e *matchExpr) Build(b clause.Builder) {
	b.AddError(fmt.Errorf("%w: envelope.Match(%q) needs a *gorm.DB with the envelope plugin, in a statement's own conditions", ErrUnsafe, e.field))
	_, _ = b.WriteString("1 = 0")
}

// exactBits is the shortest index treated as free of false positives: two
// distinct values share a 128-bit HMAC with probability 2^-128. Shorter
// indexes are resolved to exact primary keys before the statement runs.
const exactBits = 128

// filterWant is a match whose rows are checked after decryption.
type filterWant struct {
	bi   *blindIdx
	want string // the transformed value
}

// match replaces a query's Match conditions by conditions on their index
// columns, before any guard or SQL.
func (p *Plugin) match(db *gorm.DB) { p.rewriteMatches(db, true) }

// matchExact is match for statements whose rows cannot be checked after
// the fact (Row, Update, Delete): a truncated index's matches are resolved
// to exact rows first.
func (p *Plugin) matchExact(db *gorm.DB) { p.rewriteMatches(db, false) }

func (p *Plugin) rewriteMatches(db *gorm.DB, isQuery bool) {
	stmt := db.Statement
	if db.Error != nil || stmt.Schema == nil {
		return
	}
	cl, ok := stmt.Clauses["WHERE"]
	if !ok {
		return
	}
	w, ok := cl.Expression.(clause.Where)
	if !ok || !hasMatch(w.Exprs) {
		return
	}
	m := p.metaOf(stmt.Schema)
	if m.err != nil {
		db.AddError(m.err)
		return
	}
	// Only a query's own top-level conditions can be checked on its rows;
	// every other match is resolved to exact rows first.
	query := isQuery && stmt.ReflectValue.IsValid() && isQueryDest(stmt)
	exprs := make([]clause.Expression, len(w.Exprs))
	for i, x := range w.Exprs {
		e, err := p.rewrite(db, m, x, query)
		if err != nil {
			db.AddError(err)
			return
		}
		exprs[i] = e
	}
	orig := cl
	w.Exprs = exprs
	cl.Expression = w
	stmt.Clauses["WHERE"] = cl
	// The caller's *gorm.DB keeps its Match: a chain run again resolves
	// it again (new keys, new rows).
	ss := ensureState(db)
	ss.restore = append(ss.restore, func() { stmt.Clauses["WHERE"] = orig })
}

// isQueryDest reports whether the statement scans rows of its model into
// its destination (Find, First, Take, Last, Scan into models), where
// the rows can be checked after decryption.
func isQueryDest(stmt *gorm.Statement) bool {
	t := reflect.Indirect(stmt.ReflectValue).Type()
	for t.Kind() == reflect.Slice || t.Kind() == reflect.Array || t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t == stmt.Schema.ModelType
}

func hasMatch(xs []clause.Expression) bool {
	for _, x := range xs {
		switch v := x.(type) {
		case *matchExpr:
			return true
		case clause.AndConditions:
			if hasMatch(v.Exprs) {
				return true
			}
		case clause.OrConditions:
			if hasMatch(v.Exprs) {
				return true
			}
		case clause.NotConditions:
			if hasMatch(v.Exprs) {
				return true
			}
		}
	}
	return false
}

// rewrite returns x with its matches replaced; top says whether x is a
// top-level condition of a query whose rows can be checked.
func (p *Plugin) rewrite(db *gorm.DB, m *modelMeta, x clause.Expression, top bool) (clause.Expression, error) {
	sub := func(xs []clause.Expression) ([]clause.Expression, error) {
		out := make([]clause.Expression, len(xs))
		for i, y := range xs {
			e, err := p.rewrite(db, m, y, top)
			if err != nil {
				return nil, err
			}
			out[i] = e
		}
		return out, nil
	}
	switch v := x.(type) {
	case *matchExpr:
		return p.resolveMatch(db, m, v, top)
	case clause.AndConditions:
		xs, err := sub(v.Exprs)
		return clause.AndConditions{Exprs: xs}, err
	case clause.OrConditions:
		top = false
		xs, err := sub(v.Exprs)
		return clause.OrConditions{Exprs: xs}, err
	case clause.NotConditions:
		top = false
		xs, err := sub(v.Exprs)
		return clause.NotConditions{Exprs: xs}, err
	}
	return x, nil
}

// pick returns the index a match uses.
func (m *modelMeta) pick(e *matchExpr) (*blindIdx, error) {
	f := m.schema.LookUpField(e.field)
	if f == nil {
		return nil, fmt.Errorf("%w: envelope.Match: model %s has no field %q", ErrUnsafe, m.name, e.field)
	}
	if bi := m.idxByDB[f.DBName]; bi != nil {
		if !bi.global && !e.byOwner {
			return nil, fmt.Errorf("%w: envelope.Match: index %s of %s is per owner: use envelope.MatchOwner", ErrUnsafe, bi.f.Name, m.name)
		}
		return bi, nil
	}
	ef := m.byDB[f.DBName]
	if ef == nil || len(ef.idx) == 0 {
		return nil, fmt.Errorf("%w: envelope.Match: %s.%s has no blind index (tag a field envelope:\"index:%s\")", ErrUnsafe, m.name, f.Name, f.Name)
	}
	var best *blindIdx
	for _, bi := range ef.idx {
		ok := bi.global || e.byOwner
		better := best == nil || (e.byOwner && !bi.global && best.global) || (bi.global == best.global && bi.bits > best.bits)
		if ok && better {
			best = bi
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w: envelope.Match: the indexes of %s.%s are per owner: use envelope.MatchOwner", ErrUnsafe, m.name, f.Name)
	}
	return best, nil
}

var matchNothing = clause.Expr{SQL: "1 = 0"}

// resolveMatch turns one match into a condition on its index column: the
// index values under every live key, and the owner when it names one.
func (p *Plugin) resolveMatch(db *gorm.DB, m *modelMeta, e *matchExpr, top bool) (clause.Expression, error) {
	bi, err := m.pick(e)
	if err != nil {
		return nil, err
	}
	var owner any
	if e.byOwner {
		if owner = normOwnerAny(e.owner); owner == nil {
			return nil, fmt.Errorf("%w: envelope.MatchOwner needs a non-zero owner", ErrNoOwner)
		}
	}
	var vals []any
	if bi.global {
		vs, err := p.liveIndexKeys(db, bi, false)
		if err != nil {
			return nil, err
		}
		for _, v := range vs {
			vals = append(vals, bi.value(v.key, v.version, e.value))
		}
	} else {
		keys, kerrs, err := p.resolve(db, []any{owner}, false)
		if err != nil {
			return nil, err
		}
		if k := keys[owner]; k != nil && !k.Shredded && kerrs[owner] == nil {
			bk, err := k.IndexKey(bi.name)
			if err != nil {
				return nil, err
			}
			vals = append(vals, bi.value(bk, 1, e.value))
		} else if err := kerrs[owner]; err != nil && !errors.Is(err, ErrShredded) && !errors.Is(err, keystore.ErrNoDEK) {
			// An owner with no DEK has no rows to match: that is no error.
			return nil, &FieldError{Model: m.name, Field: bi.f.Name, Owner: owner, Err: err}
		}
	}
	if len(vals) == 0 {
		return matchNothing, nil // no key yet: no row has an index value
	}
	conds := []clause.Expression{clause.IN{Column: clause.Column{Table: clause.CurrentTable, Name: bi.f.DBName}, Values: vals}}
	if owner != nil {
		conds = append(conds, clause.Eq{Column: clause.Column{Table: clause.CurrentTable, Name: m.owner.DBName}, Value: owner})
	}
	want := bi.tr.Apply(e.value)
	_, limited := db.Statement.Clauses["LIMIT"]
	top = top && readsColumn(db.Statement, bi.src.f)
	if top && (bi.bits >= exactBits || !limited) {
		// The rows can be checked after decryption (filterMatches): a
		// truncated index's false positives are dropped there, unless a
		// LIMIT could have let them take a matching row's place.
		ss := ensureState(db)
		ss.matches = append(ss.matches, filterWant{bi: bi, want: want})
		return clause.AndConditions{Exprs: conds}, nil
	}
	if bi.bits >= exactBits || db.DryRun {
		// A dry run shows the index condition (the candidates' lookup).
		return clause.AndConditions{Exprs: conds}, nil
	}
	return p.exactRows(db, m, bi, conds, want)
}

// exactRows resolves a match on a truncated index to the primary keys of
// the rows whose decrypted value matches: it reads the candidates' keys,
// owners and values, and decrypts and compares them.
func (p *Plugin) exactRows(db *gorm.DB, m *modelMeta, bi *blindIdx, conds []clause.Expression, want string) (clause.Expression, error) {
	s := m.schema
	if len(s.PrimaryFields) != 1 {
		return nil, fmt.Errorf("%w: envelope.Match on a truncated index needs a model with one primary key", ErrUnsafe)
	}
	pk := s.PrimaryFields[0]
	rows, err := internal(db).Table(db.Statement.Table).
		Select([]string{pk.DBName, m.owner.DBName, bi.src.f.DBName}).
		Where(clause.AndConditions{Exprs: conds}).Rows()
	if err != nil {
		return nil, fmt.Errorf("envelope: match %s: %w", bi.f.Name, err)
	}
	type cand struct {
		id, owner any
		tok       []byte
	}
	var cands []cand
	for rows.Next() {
		var c cand
		var ownerRaw any
		if err := rows.Scan(&c.id, &ownerRaw, &c.tok); err != nil {
			rows.Close()
			return nil, fmt.Errorf("envelope: match %s: %w", bi.f.Name, err)
		}
		if c.owner = normOwnerAny(asOwner(ownerRaw)); c.owner != nil && c.tok != nil {
			cands = append(cands, c)
		}
	}
	if err := rows.Close(); err != nil {
		return nil, err
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("envelope: match %s: %w", bi.f.Name, err)
	}
	if len(cands) == 0 {
		return matchNothing, nil
	}
	var owners []any
	seen := map[any]bool{}
	for _, c := range cands {
		if !seen[c.owner] {
			seen[c.owner] = true
			owners = append(owners, c.owner)
		}
	}
	keys, _, err := p.resolve(db, owners, false)
	if err != nil {
		return nil, err
	}
	var ids []any
	for _, c := range cands {
		k := keys[c.owner]
		if k == nil || k.Shredded {
			continue
		}
		msg, err := m.openRaw(k, bi.src, c.owner, c.id, c.tok)
		if err != nil {
			continue // a value that does not open matches nothing
		}
		if bi.tr.Apply(string(msg)) == want {
			ids = append(ids, c.id)
		}
		clear(msg)
	}
	if len(ids) == 0 {
		return matchNothing, nil
	}
	return clause.IN{Column: clause.Column{Table: clause.CurrentTable, Name: pk.DBName}, Values: ids}, nil
}

// asOwner turns a scanned owner column into a value normOwner reads.
func asOwner(v any) any {
	switch x := v.(type) {
	case []byte:
		return string(x)
	}
	return v
}

// filterMatches drops from a query's result the rows whose decrypted value
// does not match (an index value shared by chance), after decryption.
func (p *Plugin) filterMatches(db *gorm.DB) {
	ss := stateOf(db)
	if ss == nil || len(ss.matches) == 0 || db.Error != nil {
		return
	}
	stmt := db.Statement
	ok := func(v reflect.Value) bool {
		v = reflect.Indirect(v)
		for _, w := range ss.matches {
			fv, found := fieldValue(w.bi.src.f, v)
			if !found {
				return false
			}
			plain, isNil := plainOfValue(fv, w.bi.src.kind)
			if isNil || w.bi.tr.Apply(plain) != w.want {
				return false
			}
		}
		return true
	}
	rv := reflect.Indirect(stmt.ReflectValue)
	switch rv.Kind() {
	case reflect.Slice:
		j := 0
		for i := 0; i < rv.Len(); i++ {
			if ok(rv.Index(i)) {
				if i != j {
					rv.Index(j).Set(rv.Index(i))
				}
				j++
			}
		}
		if j < rv.Len() && rv.CanSet() {
			db.RowsAffected -= int64(rv.Len() - j)
			rv.SetLen(j)
		}
	case reflect.Struct:
		if db.RowsAffected > 0 && !ok(rv) {
			rv.Set(reflect.Zero(rv.Type()))
			db.RowsAffected = 0
			if stmt.RaiseErrorOnNotFound {
				db.AddError(gorm.ErrRecordNotFound)
			}
		}
	}
}

// readsColumn reports whether a query's rows hold field f: it is not left
// out by Select or Omit.
func readsColumn(stmt *gorm.Statement, f *schema.Field) bool {
	for _, o := range stmt.Omits {
		if o == f.Name || o == f.DBName {
			return false
		}
	}
	if len(stmt.Selects) == 0 {
		return true
	}
	for _, s := range stmt.Selects {
		if s == "*" || s == f.Name || s == f.DBName {
			return true
		}
	}
	return false
}
