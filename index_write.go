package envelope

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// The write side of blind indexes: every statement that writes a source
// writes its indexes, computed from the values the collector gathered
// (write.go), and none writes an index alone.

// writes reports whether the statement writes field f.
func (c *collector) writes(f *schema.Field) bool { return c.written == nil || c.written(f) }

// coverIndexes makes a statement that writes a source write its indexes
// too, and refuses one that writes an index without its source.
func (c *collector) coverIndexes() bool {
	stmt := c.db.Statement
	for _, bi := range c.m.indexes {
		src, idx := c.writes(bi.src.f), c.writes(bi.f)
		switch {
		case src && !idx:
			omitted := false
			for _, o := range stmt.Omits {
				if o == bi.f.Name || o == bi.f.DBName {
					omitted = true
				}
			}
			if omitted || len(stmt.Selects) == 0 && !c.update {
				c.fail(&FieldError{Model: c.m.name, Field: bi.f.Name, Err: fmt.Errorf("%w: the statement writes %s but leaves out its blind index", ErrUnsafe, bi.src.f.Name)})
				return false
			}
			if len(stmt.Selects) > 0 {
				// Select("Email"): the index column joins the selection.
				orig := stmt.Selects
				stmt.Selects = append(append([]string(nil), orig...), bi.f.DBName)
				c.edits = append(c.edits, edit{undo: func() { stmt.Selects = orig }})
				prev := c.written
				f := bi.f
				c.written = func(g *schema.Field) bool { return g == f || prev == nil || prev(g) }
			}
		case idx && !src && c.update:
			c.fail(errIndexWrite(c.m, bi))
			return false
		}
	}
	return true
}

// checkIndexes refuses a row whose index column an insert writes with a
// value of the app's own, without its source.
func (c *collector) checkIndexes(m *modelMeta, v reflect.Value) bool {
	for _, bi := range m.indexes {
		if !c.writes(bi.src.f) && c.writes(bi.f) && bi.isSet(v) {
			c.fail(errIndexWrite(m, bi))
			return false
		}
	}
	return true
}

// clearIndexes sets the indexes of field ef of row v to NULL (” for a
// string field): the source is NULL, or written later (a self-owned row).
func (c *collector) clearIndexes(m *modelMeta, ef *encField, v reflect.Value) bool {
	for _, bi := range ef.idx {
		if !bi.set(v, nil) {
			c.fail(&FieldError{Model: m.name, Field: bi.f.Name, Err: fmt.Errorf("%w: a model with blind indexes must be passed by pointer", ErrUnsafe)})
			return false
		}
	}
	return true
}

// fillIndexes computes the index values of every collected value and puts
// them where the statement reads them: the row's index field or the map.
func (c *collector) fillIndexes(keys map[any]*ownerKey) error {
	for i := range c.items {
		it := &c.items[i]
		if it.ef == nil {
			continue
		}
		for _, bi := range it.ef.idx {
			bk, ver, err := c.p.indexKey(c.db, bi, keys[it.owner])
			if err != nil {
				return &FieldError{Model: it.m.name, Field: bi.f.Name, Err: err}
			}
			val := bi.value(bk, ver, it.plain)
			if it.mv != nil {
				c.putMap(it.mv, bi.f.DBName, val)
				continue
			}
			if !bi.set(it.row, &val) {
				return &FieldError{Model: it.m.name, Field: bi.f.Name, Err: fmt.Errorf("%w: a model with blind indexes must be passed by pointer", ErrUnsafe)}
			}
		}
	}
	return nil
}

// putMap sets mv[k] for the statement, and puts the caller's entry back
// afterwards.
func (c *collector) putMap(mv map[string]any, k string, v any) {
	old, had := mv[k]
	mv[k] = v
	c.edits = append(c.edits, edit{undo: func() {
		if had {
			mv[k] = old
		} else {
			delete(mv, k)
		}
	}})
}

// mapIndexes handles the blind indexes of a map write: an index column in
// the map is refused, and a NULL source gets a NULL index.
func (c *collector) mapIndexes(mv map[string]any) bool {
	s := c.db.Statement.Schema
	for k := range mv {
		f := s.LookUpField(k)
		if f == nil {
			continue
		}
		if bi := c.m.idxByDB[f.DBName]; bi != nil {
			c.fail(errIndexWrite(c.m, bi))
			return false
		}
	}
	for k, v := range mv {
		f := s.LookUpField(k)
		if f == nil {
			continue
		}
		ef := c.m.byDB[f.DBName]
		if ef == nil || len(ef.idx) == 0 {
			continue
		}
		if _, isNil, _, err := mapPlain(v); err == nil && isNil {
			for _, bi := range ef.idx {
				c.putMap(mv, bi.f.DBName, nil)
			}
		}
	}
	return true
}

// addressableDest makes the struct an Updates is given by value
// addressable, so that its index fields can be set: the statement is given
// a copy, and the caller's value is put back afterwards.
func (c *collector) addressableDest() {
	stmt := c.db.Statement
	rv := reflect.ValueOf(stmt.Dest)
	if rv.Kind() != reflect.Struct {
		return
	}
	cp := reflect.New(rv.Type())
	cp.Elem().Set(rv)
	orig := stmt.Dest
	stmt.Dest = cp.Interface()
	c.edits = append(c.edits, edit{undo: func() { stmt.Dest = orig }})
}

// duplicate returns the error for a driver error that reports a unique
// blind index violated, or nil. The driver's message is dropped: MySQL's
// quotes the index value.
func (m *modelMeta) duplicate(err error) error {
	msg := err.Error()
	if !errors.Is(err, gorm.ErrDuplicatedKey) && !strings.Contains(msg, "duplicate key") &&
		!strings.Contains(msg, "Duplicate entry") && !strings.Contains(msg, "UNIQUE constraint failed") {
		return nil
	}
	for _, bi := range m.indexes {
		if bi.unique && strings.Contains(msg, bi.f.DBName) {
			return &FieldError{Model: m.name, Field: bi.src.f.Name, Err: ErrDuplicate}
		}
	}
	return nil
}
