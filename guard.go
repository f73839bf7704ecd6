package envelope

import (
	"fmt"
	"reflect"
	"strings"
	"unicode"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// guardTableWrite refuses a write by table name alone (db.Table(...) with a
// map) that sets an encrypted column of a known model: without the model
// there is no serializer and no owner, and the value would be stored in
// plaintext.
func (p *Plugin) guardTableWrite(db *gorm.DB) {
	if isInternal(db) {
		return
	}
	v, ok := p.tables.Load(db.Statement.Table)
	if !ok {
		return
	}
	m := v.(*modelMeta)
	check := func(mv map[string]any) {
		for k := range mv {
			if ef := m.lookup(db.Statement.Table, k); ef != nil {
				p.addErr(db, &FieldError{Model: m.name, Field: ef.f.Name, Err: fmt.Errorf("%w: write %s through db.Model(&%s{}) so the value can be encrypted", ErrUnsafe, db.Statement.Table, m.name)})
				return
			}
		}
	}
	switch d := db.Statement.Dest.(type) {
	case map[string]any:
		check(d)
	case *map[string]any:
		check(*d)
	case []map[string]any:
		for _, mv := range d {
			check(mv)
		}
	case *[]map[string]any:
		for _, mv := range *d {
			check(mv)
		}
	}
}

// checkArgType refuses an Updates argument of another struct type whose
// field for an encrypted column is not itself tagged serializer:envelope:
// GORM would write that field's value as it is, in plaintext.
func (c *collector) checkArgType(v reflect.Value) {
	v = reflect.Indirect(v)
	if v.Kind() != reflect.Struct || v.Type() == c.db.Statement.Schema.ModelType {
		return
	}
	am := c.p.metaOfType(c.db, v.Type())
	if am == nil {
		return
	}
	for _, f := range am.schema.Fields {
		if ef := c.m.byDB[f.DBName]; ef != nil && f.DBName != "" && am.byDB[f.DBName] == nil {
			c.fail(&FieldError{Model: c.m.name, Field: ef.f.Name, Err: fmt.Errorf("%w: %s.%s updates an encrypted column but is not tagged serializer:envelope", ErrUnsafe, am.name, f.Name)})
		}
	}
}

// guard refuses WHERE conditions that compare an encrypted column to a
// value — struct and map conditions, in Where, Not and Or, and the
// conditions of FirstOrCreate — and an ORDER BY an encrypted column,
// before any SQL is sent. Tokens use random IVs, so such a comparison can
// never match, map conditions would send the plaintext, and tokens sort in
// an order that has nothing to do with their plaintexts. Raw SQL strings
// ("password = ?", "length(password)") are the caller's own.
func (p *Plugin) guard(db *gorm.DB) {
	if db.Error != nil || db.Statement.Schema == nil {
		return
	}
	m := p.metaOf(db.Statement.Schema)
	if m.err != nil {
		db.AddError(m.err)
		return
	}
	if len(m.fields) == 0 {
		return
	}
	if c, ok := db.Statement.Clauses["WHERE"]; ok {
		if w, ok := c.Expression.(clause.Where); ok {
			if name := p.comparedField(db, m, w.Exprs); name != "" {
				if f := m.schema.LookUpField(name); f != nil && m.byDB[f.DBName] != nil && len(m.byDB[f.DBName].idx) > 0 {
					p.addErr(db, &FieldError{Model: m.name, Field: name, Err: fmt.Errorf("%w: encrypted fields cannot be compared in a query: find rows by %s with envelope.Match or envelope.MatchOwner", ErrUnsafe, name)})
					return
				}
				p.addErr(db, &FieldError{Model: m.name, Field: name, Err: fmt.Errorf("%w: encrypted fields cannot be compared in a query (random IVs never match; see docs/security-model.md)", ErrUnsafe)})
				return
			}
		}
	}
	if c, ok := db.Statement.Clauses["ORDER BY"]; ok {
		if ob, ok := c.Expression.(clause.OrderBy); ok {
			if name := orderedField(db.Statement.Table, m, ob); name != "" {
				p.addErr(db, &FieldError{Model: m.name, Field: name, Err: fmt.Errorf("%w: a query cannot be ordered by an encrypted field (tokens sort at random; see docs/security-model.md)", ErrUnsafe)})
			}
		}
	}
}

// orderedField returns the name of an encrypted field that ob orders by,
// or "". A column is one given as a clause.Column, or a term of an
// Order("...") string that is only a column name (unqualified, or
// qualified by the statement's table, quoted or not) followed by ASC,
// DESC or NULLS FIRST/LAST. Other terms are SQL expressions
// ("length(password)", "password IS NULL"): like raw WHERE strings, the
// caller's own. An OrderBy built from an Expression is one too.
func orderedField(table string, m *modelMeta, ob clause.OrderBy) string {
	if ob.Expression != nil {
		return ""
	}
	for _, c := range ob.Columns {
		if !c.Column.Raw {
			if ef := m.lookup(table, c.Column); ef != nil {
				return ef.f.Name
			}
			continue
		}
		for _, term := range splitTerms(c.Column.Name) {
			if col := orderColumn(term); col != "" {
				if ef := m.lookup(table, col); ef != nil {
					return ef.f.Name
				}
			}
		}
	}
	return ""
}

// splitTerms splits an ORDER BY list at its top-level commas, outside
// parentheses and quotes.
func splitTerms(s string) []string {
	var out []string
	depth, start := 0, 0
	var quote byte
	for i := 0; i < len(s); i++ {
		ch := s[i]
		switch {
		case quote != 0:
			if ch == quote {
				quote = 0
			}
		case ch == '\'' || ch == '"' || ch == '`':
			quote = ch
		case ch == '(':
			depth++
		case ch == ')':
			depth--
		case ch == ',' && depth == 0:
			out = append(out, s[start:i])
			start = i + 1
		}
	}
	return append(out, s[start:])
}

// orderColumn returns the column an ORDER BY term consists of, or "" if
// the term is an expression.
func orderColumn(term string) string {
	words := strings.Fields(term)
	if len(words) == 0 {
		return ""
	}
	for _, w := range words[1:] {
		switch strings.ToLower(w) {
		case "asc", "desc", "nulls", "first", "last":
		default:
			return ""
		}
	}
	for _, r := range words[0] {
		if !(r == '_' || r == '.' || r == '"' || r == '`' || r == '$' || unicode.IsLetter(r) || unicode.IsDigit(r)) {
			return ""
		}
	}
	return words[0]
}

// comparedField returns the name of an encrypted field that exprs compare
// to a value, or "".
func (p *Plugin) comparedField(db *gorm.DB, m *modelMeta, exprs []clause.Expression) string {
	for _, e := range exprs {
		var col any
		var sub []clause.Expression
		switch x := e.(type) {
		case clause.Eq:
			col = x.Column
		case clause.Neq:
			col = x.Column
		case clause.IN:
			col = x.Column
		case clause.Gt:
			col = x.Column
		case clause.Gte:
			col = x.Column
		case clause.Lt:
			col = x.Column
		case clause.Lte:
			col = x.Column
		case clause.Like:
			col = x.Column
		case clause.AndConditions:
			sub = x.Exprs
		case clause.OrConditions:
			sub = x.Exprs
		case clause.NotConditions:
			sub = x.Exprs
		case clause.Where:
			sub = x.Exprs
		}
		if n := p.comparedField(db, m, sub); n != "" {
			return n
		}
		if col == nil {
			continue
		}
		if ef := m.lookup(db.Statement.Table, col); ef != nil {
			return ef.f.Name
		}
	}
	return ""
}

// lookup finds the encrypted field a condition's column names, if any:
// an unqualified name, or one qualified by the statement's own table.
func (m *modelMeta) lookup(table string, col any) *encField {
	name := columnOf(table, col)
	if name == "" {
		return nil
	}
	if ef := m.byDB[name]; ef != nil {
		return ef
	}
	for i := range m.fields {
		if m.fields[i].f.Name == name {
			return &m.fields[i]
		}
	}
	return nil
}

// columnOf returns the unquoted name of the column col names (a string or
// a clause.Column), if it is unqualified or qualified by table; else "".
func columnOf(table string, col any) string {
	var name, qual string
	switch c := col.(type) {
	case string:
		name = c
		if i := strings.LastIndexByte(c, '.'); i >= 0 {
			qual, name = c[:i], c[i+1:]
		}
	case clause.Column:
		name, qual = c.Name, c.Table
		if qual == clause.CurrentTable {
			qual = ""
		}
	default:
		return ""
	}
	qual = strings.Trim(qual, "`\"")
	if qual != "" && qual != table {
		return ""
	}
	return strings.Trim(name, "`\"")
}
