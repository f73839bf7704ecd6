package envelope

import (
	"fmt"
	"reflect"
	"runtime"
	"sync"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"github.com/gorm-envelope/envelope/internal/token"
	"gorm.io/gorm"
)

// decryptAll decrypts every target, on several cores for a large result.
// Each goroutine owns a contiguous range of rows, and the errors are
// returned in row order, so results and errors are the same whatever the
// number of cores. The values opened are added to cnt (nil: not counted).
// The values that did not open under their owner's DEK are returned too,
// for retryStale.
func (p *Plugin) decryptAll(targets []target, keys map[any]*ownerKey, kerrs map[any]error, cnt fieldCounts) ([]error, []staleVal) {
	workers := max(runtime.GOMAXPROCS(0), 1)
	parts := make([][]error, workers)
	stales := make([][]staleVal, workers)
	var cnts []fieldCounts
	if cnt != nil {
		cnts = make([]fieldCounts, workers)
	}
	parallel(len(targets), func(w, lo, hi int) {
		var ar arena
		var c fieldCounts
		if cnts != nil {
			c = fieldCounts{}
			cnts[w] = c
		}
		for i, t := range targets[lo:hi] {
			if t.m == nil { // not a struct of the model
				continue
			}
			parts[w] = p.decryptTarget(t, keys, kerrs, &ar, (hi-lo-i)*len(t.m.fields), parts[w], c, &stales[w])
		}
	})
	var errs []error
	for _, part := range parts {
		errs = append(errs, part...)
	}
	var stale []staleVal
	for _, s := range stales {
		stale = append(stale, s...)
	}
	for _, c := range cnts {
		cnt.merge(c)
	}
	return errs, stale
}

// staleVal is a value that did not open under its owner's DEK as the
// statement resolved it, perhaps from a cache that another process made
// stale (a Rekey gave the owner a new DEK). Its field is zero and its
// error reported already; retryStale tries it once more.
type staleVal struct {
	t          target
	ef         *encField
	k          *ownerKey // the key it failed under
	otext, row string
	stored     string // the value as read
	bv         bool   // it has the shape of a bound value
	err        *FieldError
}

// retryStale reloads, from the profile table, the DEKs of the owners of
// values that did not open, and opens again those whose owner's DEK turns
// out to have changed: a DEK cached before another process rekeyed the
// owner fails every value sealed since. It returns errs without the errors
// of the values that opened. A value that fails again stays zero, with its
// error; nothing is retried when the DEK is the one it failed under.
func (p *Plugin) retryStale(db *gorm.DB, errs []error, stale []staleVal, cnt fieldCounts) []error {
	if len(stale) == 0 {
		return errs
	}
	var owners []any
	seen := map[any]bool{}
	for _, s := range stale {
		if !seen[s.t.owner] {
			seen[s.t.owner] = true
			owners = append(owners, s.t.owner)
		}
	}
	for _, o := range owners {
		p.store.Forget(o)
	}
	keys, _, err := p.resolve(db, owners, false)
	if err != nil {
		return errs
	}
	var ar arena
	opened := map[*FieldError]bool{}
	for _, s := range stale {
		k := keys[s.t.owner]
		if k == nil || k.Shredded || k == s.k {
			continue
		}
		msg, err := ar.open(s.t.m, k, s.ef, s.otext, s.row, s.stored, s.bv, 1)
		if err != nil {
			continue
		}
		base := s.t.m.base(s.t.v)
		direct := base != nil && s.ef.direct
		var fv reflect.Value
		if !direct {
			var ok bool
			if fv, ok = fieldValue(s.ef.f, s.t.v); !ok || !fv.CanSet() {
				continue
			}
		}
		setOpened(base, fv, direct, s.ef, msg)
		cnt.add(s.t.m, s.ef, 1)
		opened[s.err] = true
	}
	if len(opened) == 0 {
		return errs
	}
	kept := errs[:0]
	for _, e := range errs {
		if fe, ok := e.(*FieldError); ok && opened[fe] {
			continue
		}
		kept = append(kept, e)
	}
	return kept
}

// setOpened stores msg, a value's plaintext in memory only it uses, in its
// field: at its offset in the row when direct, else through fv.
func setOpened(base addr, fv reflect.Value, direct bool, ef *encField, msg []byte) {
	if direct {
		ef.setAt(base, msg)
		return
	}
	switch ef.kind {
	case kindString:
		fv.SetString(bytesString(msg))
	case kindStringPtr:
		s := bytesString(msg)
		fv.Set(reflect.ValueOf(&s))
	case kindBytes:
		fv.SetBytes(msg)
	}
}

var targetPool sync.Pool

// getTargets returns n zero targets, reusing the memory of an earlier
// result when it can.
func getTargets(n int) []target {
	if p, ok := targetPool.Get().(*[]target); ok && cap(*p) >= n {
		return (*p)[:n]
	}
	return make([]target, n)
}

// putTargets clears targets (they point into the result) and keeps their
// memory for the next result, unless it is large. Entries past len(t) are
// zero already: getTargets hands out t[:n] and only those are written.
func putTargets(t []target) {
	clear(t)
	if cap(t) <= 1<<16 {
		t = t[:0]
		targetPool.Put(&t)
	}
}

// anyToken reports whether struct v holds a token in an encrypted field.
func (m *modelMeta) anyToken(v reflect.Value) bool {
	base := m.base(v)
	for i := range m.fields {
		ef := &m.fields[i]
		if base != nil && ef.direct {
			if looksSealed(ef.textAt(base)) {
				return true
			}
		} else if fv, ok := fieldValue(ef.f, v); ok && hasToken(fv, ef.kind) {
			return true
		}
	}
	return false
}

func hasToken(fv reflect.Value, k valueKind) bool {
	switch k {
	case kindString:
		return looksSealed(fv.String())
	case kindStringPtr:
		return !fv.IsNil() && looksSealed(fv.Elem().String())
	case kindBytes:
		return looksSealed(bytesString(fv.Bytes()))
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
			return bytesString(b)
		}
	}
	return ""
}

// zeroRows empties every encrypted field of the rows of rv: after a failed
// lookup, neither the tokens the scan left nor the values the pipeline
// already opened may stay.
func zeroRows(rv reflect.Value, elemType reflect.Type, m *modelMeta) {
	for i := 0; i < rv.Len(); i++ {
		if v := reflect.Indirect(rv.Index(i)); v.Kind() == reflect.Struct && v.Type() == elemType {
			zeroTokens(target{m: m, v: v})
		}
	}
}

func zeroTokens(t target) {
	for i := range t.m.fields {
		if fv, ok := fieldValue(t.m.fields[i].f, t.v); ok && fv.CanSet() {
			fv.Set(reflect.Zero(fv.Type()))
		}
	}
}

// decryptTarget opens the encrypted fields of t, appending their errors
// to errs and counting the values opened in cnt (nil: not counted).
func (p *Plugin) decryptTarget(t target, keys map[any]*ownerKey, kerrs map[any]error, ar *arena, left int, errs []error, cnt fieldCounts, stale *[]staleVal) []error {
	var (
		k       *ownerKey
		kerr    error
		looked  bool
		otext   string
		row     string
		rowRead bool
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
		if p.keys == nil {
			// No master key: no stored value is read, token or not, owner or
			// not, and AcceptPlaintext does not change that. (The pipeline
			// never starts without a key: every read comes through here.)
			fail(ErrNoKey)
			continue
		}
		bv := isBoundValue(b)
		if !bv && !token.LooksLikeString(b) {
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
		if k.Shredded {
			fail(ErrShredded)
			continue
		}
		if bv && !rowRead { // once per row, and only where needed
			otext, row, rowRead = keystore.OwnerText(t.owner), t.m.rowOf(t.v), true
		}
		msg, err := ar.open(t.m, k, ef, otext, row, b, bv, left)
		if err != nil {
			fail(err)
			if stale != nil {
				*stale = append(*stale, staleVal{t: t, ef: ef, k: k, otext: otext, row: row, stored: b, bv: bv, err: errs[len(errs)-1].(*FieldError)})
			}
			continue
		}
		cnt.add(t.m, ef, 1)
		// msg is memory only this value uses (its capacity is cut): a string
		// can share it.
		setOpened(base, fv, direct, ef, msg)
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
