package envelope

import (
	"reflect"
	"sync"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// writeState is what a statement's serializer Value calls read: the values
// the before-write callback collected and the sealer encrypting them. It
// lives in the statement's context.
type writeState struct {
	p        *Plugin
	db       *gorm.DB
	m        *modelMeta // the statement's model
	defOwner any
	items    []item
	sealer   *sealer           // seals items[i] into its token
	next     int               // the item after the last one found by address
	byAddr   map[uintptr]int   // built on first use: field address -> item
	byValue  map[tokKey]string // built on first use, for any other value

	pinned   any                       // the owner the update was pinned to (checkPinned)
	self     []selfRow                 // self-owned rows sealed after the insert
	deferred map[uintptr]*schema.Field // their values' addresses
	selfTx   *selfTx

	refusedMu sync.Mutex
	refusal   error // the first value Value refused
}

// refuse notes the first value the serializer refused, for afterWrite to
// report in place of the driver's error.
func (st *writeState) refuse(err error) {
	st.refusedMu.Lock()
	if st.refusal == nil {
		st.refusal = err
	}
	st.refusedMu.Unlock()
}

// token returns the token prepared for the value plain of field, held at
// fv in the struct dst. A value is found by its field's address, and only
// if it is still the same column, plaintext and owner; else by column,
// owner and plaintext.
//
// Why by address: GORM hands Value the field's value, not the item the
// before-write hook collected, and equal plaintexts of one owner in one
// statement must still get tokens of their own (each its own IV), so the
// value alone does not say which token is its. The field's address does,
// for every struct GORM reads in place (the rows of Create and Save, the
// argument of Updates); it is checked against the column, plaintext and
// owner, so a field changed since (a hook, an association) is never given
// another value's token. What GORM copies (map values, clause values, the
// struct of Updates(T{...})) has no stable address and is matched by value.
func (st *writeState) token(field *schema.Field, dst reflect.Value, plain string) (string, any, bool, error) {
	r := reflect.Indirect(dst)
	if a := st.fieldAddr(field, r); a != 0 {
		if i, ok := st.byAddress(a); ok {
			it := &st.items[i]
			if it.f == field && it.plain == plain && r.Type() == it.m.schema.ModelType {
				owner := it.m.ownerOf(r)
				if owner == nil {
					owner = st.defOwner
				}
				if owner == it.owner {
					tok, err := st.sealer.token(i)
					return tok, owner, err == nil, err
				}
			}
		}
	}
	owner := st.ownerFor(dst)
	if st.byValue == nil {
		if err := st.sealer.wait(); err != nil {
			return "", owner, false, err
		}
		st.byValue = make(map[tokKey]string, len(st.items))
		for i, it := range st.items {
			k := tokKey{col: it.f.DBName, owner: it.owner, plain: it.plain}
			if _, dup := st.byValue[k]; !dup {
				st.byValue[k] = st.sealer.toks[i]
			}
		}
	}
	tok, ok := st.byValue[tokKey{col: field.DBName, owner: owner, plain: plain}]
	return tok, owner, ok, nil
}

// fieldAddr returns the address of field in struct r, or 0 if r is not a
// struct of the field's model or the field is not addressable.
func (st *writeState) fieldAddr(field *schema.Field, r reflect.Value) uintptr {
	if r.Kind() != reflect.Struct || r.Type() != field.Schema.ModelType {
		return 0
	}
	if m := st.m; m != nil && m.schema == field.Schema {
		for i := range m.fields {
			if ef := &m.fields[i]; ef.f == field && ef.direct {
				if base := m.base(r); base != nil {
					return uintptr(base) + ef.off
				}
			}
		}
	}
	fv, _ := fieldValue(field, r)
	if fv.IsValid() {
		return addrOf(fv)
	}
	return 0
}

// byAddress returns the item collected from the field at address a. GORM
// asks for values row by row, as they were collected: the items next to
// the last one found are tried first, the address index built only if
// they do not match.
func (st *writeState) byAddress(a uintptr) (int, bool) {
	for i := max(st.next-4, 0); i < min(st.next+4, len(st.items)); i++ {
		if st.items[i].addr == a {
			st.next = i + 1
			return i, true
		}
	}
	if st.byAddr == nil {
		st.byAddr = make(map[uintptr]int, len(st.items))
		for i := range st.items {
			if a := st.items[i].addr; a != 0 {
				st.byAddr[a] = i
			}
		}
	}
	i, ok := st.byAddr[a]
	if ok {
		st.next = i + 1
	}
	return i, ok
}

func (st *writeState) ownerFor(dst reflect.Value) any {
	dst = reflect.Indirect(dst)
	if dst.IsValid() && dst.Kind() == reflect.Struct {
		if o := st.p.metaOfType(st.db, dst.Type()).ownerOf(dst); o != nil {
			return o
		}
	}
	return st.defOwner
}

// tokKey names one value of one statement: column, owner and plaintext.
type tokKey struct {
	col   string
	owner any
	plain string
}

func plainOfValue(fv reflect.Value, k valueKind) (string, bool) {
	switch k {
	case kindString:
		return fv.String(), false
	case kindStringPtr:
		if fv.IsNil() {
			return "", true
		}
		return fv.Elem().String(), false
	case kindBytes:
		if fv.IsNil() {
			return "", true
		}
		return string(fv.Bytes()), false
	}
	return "", true
}

func addrOf(fv reflect.Value) uintptr {
	if fv.CanAddr() {
		return fv.UnsafeAddr()
	}
	return 0
}

func distinctOwners(items []item) []any {
	seen := make(map[any]struct{})
	var out []any
	for _, it := range items {
		if _, ok := seen[it.owner]; !ok {
			seen[it.owner] = struct{}{}
			out = append(out, it.owner)
		}
	}
	return out
}

// item is one plaintext a statement writes.
type item struct {
	owner any
	m     *modelMeta
	f     *schema.Field
	plain string
	addr  uintptr // the address of the field holding it; 0 if none

	enc   *encField
	rowID string // the row's primary key as text, for a row-bound model
	otext string // the owner as text, for a bound value (set by finish)

	// For a field with blind indexes: where its index values go, the
	// struct row or the map it came from.
	ef  *encField
	row reflect.Value
	mv  map[string]any
}

// edit is a map entry or clause value replaced by a serializer value for
// the statement and put back afterwards.
type edit struct {
	f    *schema.Field
	tmp  reflect.Value // a model value holding the plaintext and owner
	put  func(any)
	undo func()
}
