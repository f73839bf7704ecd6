package envelope

import (
	"errors"
	"fmt"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/gorm-envelope/envelope/internal/token"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// target is one struct of a query result holding encrypted fields.
type target struct {
	m     *modelMeta
	v     reflect.Value
	owner any
	row   int // index in the result slice; -1 for a joined struct
}

// joinPath is a chain of has-one/belongs-to relationships loaded by Joins.
type joinPath []*schema.Relationship

func joinPaths(stmt *gorm.Statement) []joinPath {
	if stmt.Schema == nil || len(stmt.Joins) == 0 {
		return nil
	}
	var out []joinPath
	for _, j := range stmt.Joins {
		s := stmt.Schema
		var path joinPath
		for _, name := range strings.Split(j.Name, ".") {
			rel, ok := s.Relationships.Relations[name]
			if !ok || rel.Field.Schema != s {
				path = nil
				break
			}
			path = append(path, rel)
			s = rel.FieldSchema
		}
		if len(path) > 0 {
			out = append(out, path)
		}
	}
	return out
}

// afterQuery decrypts every encrypted field of the result: one IN (...)
// lookup for all owners whose DEK is not cached, then each token in place.
// A value that cannot be decrypted is left at its zero value and the
// statement returns one error naming model, field and owner.
func (p *Plugin) afterQuery(db *gorm.DB) {
	stmt := db.Statement
	rs := endPipeline(stmt)
	defer rs.release()
	// Nothing was scanned (no row, or the statement was refused before any
	// SQL): the destination holds only what the caller put there.
	if stmt.Schema == nil || !stmt.ReflectValue.IsValid() || db.RowsAffected == 0 {
		return
	}
	rv := reflect.Indirect(stmt.ReflectValue)
	var elemType reflect.Type
	switch rv.Kind() {
	case reflect.Slice, reflect.Array:
		elemType = rv.Type().Elem()
		for elemType.Kind() == reflect.Pointer {
			elemType = elemType.Elem()
		}
	case reflect.Struct:
		elemType = rv.Type()
	default:
		return
	}
	var m *modelMeta
	if elemType == stmt.Schema.ModelType {
		m = p.metaOf(stmt.Schema)
	} else {
		m = p.metaOfType(db, elemType)
	}
	if m != nil && m.err != nil {
		db.AddError(m.err)
		return
	}
	joins := joinPaths(stmt)
	if (m == nil || len(m.fields) == 0) && len(joins) == 0 {
		return
	}

	n := 1
	if rv.Kind() != reflect.Struct {
		n = rv.Len()
	}
	targets := make([]target, 0, n*(1+len(joins)))
	owners := map[any]struct{}{}
	add := func(m *modelMeta, v reflect.Value, row int) {
		if m == nil || len(m.fields) == 0 {
			return
		}
		o := m.ownerOf(v)
		targets = append(targets, target{m: m, v: v, owner: o, row: row})
		if o == nil {
			return
		}
		base := m.base(v)
		for i := range m.fields {
			ef := &m.fields[i]
			if base != nil && ef.direct {
				if token.LooksLikeString(ef.textAt(base)) {
					owners[o] = struct{}{}
					return
				}
			} else if fv, ok := fieldValue(ef.f, v); ok && hasToken(fv, ef.kind) {
				owners[o] = struct{}{}
				return
			}
		}
	}
	visit := func(v reflect.Value, row int) {
		v = reflect.Indirect(v)
		if v.Kind() != reflect.Struct {
			return
		}
		if elemType == v.Type() {
			add(m, v, row)
		}
		for _, path := range joins {
			nv := v
			for _, rel := range path {
				fv, ok := fieldValue(rel.Field, nv)
				if !ok {
					nv = reflect.Value{}
					break
				}
				nv = reflect.Indirect(fv)
				if nv.Kind() != reflect.Struct {
					nv = reflect.Value{}
					break
				}
			}
			if nv.IsValid() {
				add(p.metaOf(path[len(path)-1].FieldSchema), nv, -1)
			}
		}
	}
	if rv.Kind() == reflect.Struct {
		visit(rv, -1)
	} else {
		for i := 0; i < rv.Len(); i++ {
			visit(rv.Index(i), i)
		}
	}
	if len(targets) == 0 {
		return
	}

	var errs []error
	var keys map[any]*ownerKey
	var kerrs map[any]error
	if len(owners) > 0 {
		list := make([]any, 0, len(owners))
		for o := range owners {
			list = append(list, o)
		}
		var err error
		keys, kerrs, err = p.resolve(db, list, false)
		if err != nil && !errors.Is(err, ErrNoKey) {
			// The lookup failed: leave nothing readable behind.
			for _, t := range targets {
				zeroTokens(t)
			}
			db.AddError(err)
			return
		}
		if err != nil {
			kerrs = map[any]error{}
			for o := range owners {
				kerrs[o] = ErrNoKey
			}
		}
	}
	errs = p.decryptAll(targets, keys, kerrs, rs)
	if len(errs) > 0 {
		db.AddError(join(errs))
	}
}

// parallelMin is the number of rows from which a result is decrypted on
// several cores: below it, starting goroutines costs more than it saves
// (measured with BenchmarkDecryptRows).
var parallelMin = 512

// parallel calls fn over [0, n) in contiguous ranges, the w-th of
// workers() ranges on its own goroutine when n reaches parallelMin, else
// fn(0, 0, n) on the calling goroutine.
func parallel(n int, fn func(w, lo, hi int)) {
	workers := runtime.GOMAXPROCS(0)
	if n < parallelMin || workers < 2 {
		fn(0, 0, n)
		return
	}
	chunk := (n + workers - 1) / workers
	var wg sync.WaitGroup
	for w, lo := 0, 0; lo < n; w, lo = w+1, lo+chunk {
		hi := min(lo+chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			fn(w, lo, hi)
		}()
	}
	wg.Wait()
}

// decryptAll decrypts every target, on several cores for a large result.
// Each goroutine owns a contiguous range of rows, and the errors are
// returned in row order, so results and errors are the same whatever the
// number of cores.
func (p *Plugin) decryptAll(targets []target, keys map[any]*ownerKey, kerrs map[any]error, rs *readState) []error {
	parts := make([][]error, max(runtime.GOMAXPROCS(0), 1))
	var pipelined atomic.Uint64
	parallel(len(targets), func(w, lo, hi int) {
		var used uint64
		var ar arena
		for i, t := range targets[lo:hi] {
			parts[w] = p.decryptTarget(t, keys, kerrs, rs, &used, &ar, (hi-lo-i)*len(t.m.fields), parts[w])
		}
		pipelined.Add(used)
	})
	p.pipelined.Add(pipelined.Load())
	var errs []error
	for _, part := range parts {
		errs = append(errs, part...)
	}
	return errs
}

func hasToken(fv reflect.Value, k valueKind) bool {
	switch k {
	case kindString:
		return token.LooksLikeString(fv.String())
	case kindStringPtr:
		return !fv.IsNil() && token.LooksLikeString(fv.Elem().String())
	case kindBytes:
		return token.LooksLike(fv.Bytes())
	}
	return false
}

// stored returns the field's stored text, or "" when NULL or empty. For a
// []byte field the string shares the field's bytes: it is only read.
func stored(fv reflect.Value, k valueKind) string {
	switch k {
	case kindString:
		return fv.String()
	case kindStringPtr:
		if !fv.IsNil() {
			return fv.Elem().String()
		}
	case kindBytes:
		if b := fv.Bytes(); len(b) > 0 {
			return unsafe.String(&b[0], len(b))
		}
	}
	return ""
}

func zeroTokens(t target) {
	for i := range t.m.fields {
		if fv, ok := fieldValue(t.m.fields[i].f, t.v); ok && fv.CanSet() {
			fv.Set(reflect.Zero(fv.Type()))
		}
	}
}

func (p *Plugin) decryptTarget(t target, keys map[any]*ownerKey, kerrs map[any]error, rs *readState, used *uint64, ar *arena, left int, errs []error) []error {
	var (
		k      *ownerKey
		kerr   error
		looked bool
	)
	// Fields reached without a pointer are read and written at their
	// offset in the row; the others through reflection.
	base := t.m.base(t.v)
	for i := range t.m.fields {
		ef := &t.m.fields[i]
		direct := base != nil && ef.direct
		var fv reflect.Value
		var b string
		if direct {
			b = ef.textAt(base)
		} else {
			var ok bool
			if fv, ok = fieldValue(ef.f, t.v); !ok || !fv.CanSet() {
				continue
			}
			b = stored(fv, ef.kind)
		}
		if b == "" {
			continue
		}
		fail := func(err error) {
			if direct {
				ef.zeroAt(base)
			} else {
				fv.Set(reflect.Zero(fv.Type()))
			}
			errs = append(errs, &FieldError{Model: t.m.name, Field: ef.f.Name, Owner: t.owner, Err: err})
		}
		if !token.LooksLikeString(b) {
			if p.cfg.AcceptPlaintext {
				p.plaintextRead(t.m, ef)
				continue
			}
			fail(fmt.Errorf("%w: stored value is not a token", ErrDecrypt))
			continue
		}
		if t.owner == nil {
			if t.m.owner == nil {
				fail(fmt.Errorf("%w: model has no field tagged envelope:\"owner\"", ErrNoOwner))
			} else {
				fail(fmt.Errorf("%w: owner field %s is zero or was not selected", ErrNoOwner, t.m.owner.Name))
			}
			continue
		}
		if !looked { // once per row, not per field
			k, kerr, looked = keys[t.owner], kerrs[t.owner], true
		}
		if kerr != nil {
			fail(kerr)
			continue
		}
		if k == nil {
			fail(fmt.Errorf("%w: owner has no DEK", ErrDecrypt))
			continue
		}
		if k.shredded {
			fail(ErrShredded)
			continue
		}
		msg, ok := rs.opened(t.row, i, k, b)
		var err error
		if ok {
			*used++
		} else {
			msg, err = ar.decrypt(k.c, b, left)
		}
		if err != nil {
			fail(fmt.Errorf("%w: token does not open under the owner's DEK", ErrDecrypt))
			continue
		}
		// msg is memory only this value uses (its capacity is cut): a string
		// can share it.
		if direct {
			ef.setAt(base, msg)
			continue
		}
		switch ef.kind {
		case kindString:
			fv.SetString(unsafe.String(unsafe.SliceData(msg), len(msg)))
		case kindStringPtr:
			s := unsafe.String(unsafe.SliceData(msg), len(msg))
			fv.Set(reflect.ValueOf(&s))
		case kindBytes:
			fv.SetBytes(msg)
		}
	}
	return errs
}

// plaintextRead counts a legacy plaintext value accepted on read, and logs
// the first one (model and field only).
func (p *Plugin) plaintextRead(m *modelMeta, ef *encField) {
	if p.plaintextReads.Add(1) == 1 {
		p.log.Warn("envelope: read plaintext from an encrypted column (Config.AcceptPlaintext); run EncryptExisting to encrypt it",
			"model", m.name, "field", ef.f.Name)
	}
}
