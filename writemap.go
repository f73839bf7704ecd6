package envelope

import (
	"fmt"
	"reflect"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm/schema"
)

// addMaps handles the map forms of Create and Update(s); false if dest is
// not a map.
func (c *collector) addMaps(dest any) bool {
	switch d := dest.(type) {
	case map[string]any:
		c.addMap(d)
	case *map[string]any:
		c.addMap(*d)
	case []map[string]any:
		for _, m := range d {
			c.addMap(m)
		}
	case *[]map[string]any:
		for _, m := range *d {
			c.addMap(m)
		}
	default:
		return false
	}
	return true
}

// addMap collects the encrypted entries of a map given to Create or
// Update(s); they are replaced by serializer values once tokens exist.
func (c *collector) addMap(mv map[string]any) {
	m := c.m
	s := c.db.Statement.Schema
	if len(m.indexes) > 0 && !c.mapIndexes(mv) {
		return
	}
	var ownerRaw any
	if m.owner != nil {
		if v, ok := mv[m.owner.Name]; ok {
			ownerRaw = v
		} else if v, ok := mv[m.owner.DBName]; ok {
			ownerRaw = v
		}
	}
	for k, v := range mv {
		f := s.LookUpField(k)
		if f == nil {
			continue
		}
		ef := m.byDB[f.DBName]
		if ef == nil {
			continue
		}
		plain, isNil, hint, err := mapPlain(v)
		if err != nil {
			c.fail(&FieldError{Model: m.name, Field: f.Name, Err: err})
			continue
		}
		if isNil {
			continue
		}
		tmp := reflect.New(s.ModelType).Elem()
		if ownerRaw != nil {
			if err := m.owner.Set(c.db.Statement.Context, tmp, ownerRaw); err != nil {
				c.fail(&FieldError{Model: m.name, Field: m.owner.Name, Err: fmt.Errorf("%w: %v", ErrNoOwner, err)})
				continue
			}
		} else if hint.IsValid() {
			if hm := c.p.metaOfType(c.db, hint.Type()); hm != nil {
				if o := hm.ownerOf(hint); o != nil {
					_ = m.owner.Set(c.db.Statement.Context, tmp, o)
				}
			}
		}
		fv := setPlain(ef.f, tmp, ef.kind, plain)
		owner := m.ownerOf(tmp)
		if owner == nil {
			owner = c.defOwner
		}
		if owner == nil {
			c.noOwner(m, f)
			continue
		}
		it := item{owner: owner, m: m, f: f, plain: plain, addr: addrOf(fv), enc: ef}
		if m.rowBound {
			if it.rowID = c.mapRow(m, mv); it.rowID == "" {
				c.fail(m.errRowUnknown(ef))
				continue
			}
		}
		if len(ef.idx) > 0 {
			it.ef, it.mv, c.indexed = ef, mv, true
		}
		c.items = append(c.items, it)
		c.edits = append(c.edits, edit{f: f, tmp: tmp,
			put:  func(nv any) { mv[k] = nv },
			undo: func() { mv[k] = v },
		})
	}
}

// mapPlain extracts a plaintext from a map or clause value. Expressions
// and subqueries are refused: their result would be stored unencrypted.
// hint is the struct a GORM serializer value came from, if any.
func mapPlain(v any) (plain string, isNil bool, hint reflect.Value, err error) {
	if p, isNil, ok := plainOf(v); ok {
		return p, isNil, reflect.Value{}, nil
	}
	// FirstOrCreate(...).Assign(struct) hands over GORM's own serializer
	// wrapper: read the plaintext from the struct it points into.
	if dest, f, ok := gormSerializer(v); ok {
		if fv, ok := fieldValue(f, dest); ok {
			if p, isNil, ok := plainOf(fv.Interface()); ok {
				return p, isNil, reflect.Indirect(dest), nil
			}
		}
	}
	return "", false, reflect.Value{}, fmt.Errorf("%w: cannot store a %T in an encrypted field: it would be written unencrypted", ErrUnsafe, v)
}

func setPlain(f *schema.Field, tmp reflect.Value, k valueKind, plain string) reflect.Value {
	fv, _ := fieldValue(f, tmp)
	switch k {
	case kindString:
		fv.SetString(plain)
	case kindStringPtr:
		s := plain
		fv.Set(reflect.ValueOf(&s))
	case kindBytes:
		fv.SetBytes([]byte(plain))
	}
	return fv
}

// mapRow returns the key text of the row a map of model m writes: its
// primary key entry, or for an update, the updated model's.
func (c *collector) mapRow(m *modelMeta, mv map[string]any) string {
	if m.rowKey != nil {
		for _, k := range []string{m.rowKey.Name, m.rowKey.DBName} {
			if v, ok := mv[k]; ok {
				if r := keystore.OwnerText(normOwnerAny(v)); r != "" {
					return r
				}
			}
		}
	}
	if c.update && m == c.m {
		return c.defRow
	}
	return ""
}
