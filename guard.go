package envelope

import (
	"fmt"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// guard refuses WHERE conditions that compare an encrypted column to a
// value — struct and map conditions, in Where, Not and Or, and the
// conditions of FirstOrCreate — before any SQL is sent. Tokens use random
// IVs, so such a comparison can never match, and map conditions would send
// the plaintext. Raw SQL strings ("password = ?") are the caller's own.
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
	c, ok := db.Statement.Clauses["WHERE"]
	if !ok {
		return
	}
	w, ok := c.Expression.(clause.Where)
	if !ok {
		return
	}
	if name := p.comparedField(db, m, w.Exprs); name != "" {
		db.AddError(&FieldError{Model: m.name, Field: name, Err: fmt.Errorf("%w: encrypted fields cannot be compared in a query (random IVs never match; see docs/security-model.md)", ErrUnsafe)})
	}
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
		return nil
	}
	qual = strings.Trim(qual, "`\"")
	if qual != "" && qual != table {
		return nil
	}
	name = strings.Trim(name, "`\"")
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
