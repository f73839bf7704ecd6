package envelope

import (
	"errors"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// afterQuery decrypts every encrypted field of the result: one IN (...)
// lookup for all owners whose DEK is not cached, then each token in place.
// A value that cannot be decrypted is left at its zero value and the
// statement returns one error naming model, field and owner.
func (p *Plugin) afterQuery(db *gorm.DB) {
	stmt := db.Statement
	sinkFor(db) // before the preloads run, whatever this statement reads
	rs := endPipeline(db)
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
	if elemType != stmt.Schema.ModelType {
		m = p.projection(p.metaOf(stmt.Schema), m)
	}
	joins := joinPaths(stmt)
	if (m == nil || len(m.fields) == 0) && len(joins) == 0 {
		return
	}

	n := 1
	if rv.Kind() != reflect.Struct {
		n = rv.Len()
	}
	owners := map[any]struct{}{}
	if rv.Kind() != reflect.Struct && len(joins) == 0 {
		p.afterQuerySlice(db, rv, elemType, m, rs)
		return
	}
	targets := make([]target, 0, n*(1+len(joins)))
	add := func(m *modelMeta, v reflect.Value) {
		if m == nil || len(m.fields) == 0 {
			return
		}
		o := m.ownerOf(v)
		targets = append(targets, target{m: m, v: v, owner: o})
		if o != nil && m.anyToken(v) {
			owners[o] = struct{}{}
		}
	}
	visit := func(v reflect.Value) {
		v = reflect.Indirect(v)
		if v.Kind() != reflect.Struct {
			return
		}
		if elemType == v.Type() {
			add(m, v)
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
				add(p.metaOf(path[len(path)-1].FieldSchema), nv)
			}
		}
	}
	if rv.Kind() == reflect.Struct {
		visit(rv)
	} else {
		for i := 0; i < rv.Len(); i++ {
			visit(rv.Index(i))
		}
	}
	p.decryptTargets(db, targets, owners)
}

// afterPreload is the query's last hook: it ends the statement's state and
// adds the errors the statement's own sink collected.
func (p *Plugin) afterPreload(db *gorm.DB) {
	ss := endState(db)
	if ss == nil || !ss.ownSink {
		return
	}
	sink := ss.sink
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if err := join(sink.errs); err != nil {
		db.AddError(err)
	}
}

// afterQuerySlice decrypts a slice of the model, the common case. Rows the
// pipeline opened are filled from its results, checked per row; the others
// become targets of the ordinary pass. Both passes run on several cores
// for a large result.
func (p *Plugin) afterQuerySlice(db *gorm.DB, rv reflect.Value, elemType reflect.Type, m *modelMeta, rs *readState) {
	n := rv.Len()
	targets := getTargets(n)
	defer putTargets(targets)
	covered := rs.covered(n)
	owners := rs.owners() // of the covered rows that hold tokens
	workers := max(runtime.GOMAXPROCS(0), 1)
	sets := make([]map[any]struct{}, workers)
	parallelFrom(covered, n, func(w, lo, hi int) {
		set := map[any]struct{}{}
		for i := lo; i < hi; i++ {
			v := reflect.Indirect(rv.Index(i))
			if v.Kind() != reflect.Struct || v.Type() != elemType {
				continue
			}
			o := m.ownerOf(v)
			targets[i] = target{m: m, v: v, owner: o}
			if o != nil && m.anyToken(v) {
				set[o] = struct{}{}
			}
		}
		sets[w] = set
	})
	for _, set := range sets {
		for o := range set {
			owners[o] = struct{}{}
		}
	}
	keys, kerrs, ok := p.resolveOwners(db, owners, nil)
	if !ok {
		zeroRows(rv, elemType, m)
		return
	}
	cnt := p.counts()
	if covered > 0 {
		rs.validate(keys, kerrs)
		var used atomic.Uint64
		var mu sync.Mutex
		var missing []any // owners of rows left over that were not resolved
		parallel(covered, func(_, lo, hi int) {
			var u uint64
			var fc []int // per field, with an observer
			if cnt != nil {
				fc = make([]int, len(m.fields))
			}
			for i := lo; i < hi; i++ {
				v := reflect.Indirect(rv.Index(i))
				if v.Kind() != reflect.Struct || v.Type() != elemType {
					continue
				}
				if n := rs.apply(i, v, fc); n >= 0 {
					u += uint64(n)
					continue
				}
				o := m.ownerOf(v)
				targets[i] = target{m: m, v: v, owner: o}
				if o != nil && keys[o] == nil && kerrs[o] == nil && m.anyToken(v) {
					mu.Lock()
					missing = append(missing, o)
					mu.Unlock()
				}
			}
			used.Add(u)
			if fc != nil {
				mu.Lock()
				for j, n := range fc {
					cnt.add(m, &m.fields[j], n)
				}
				mu.Unlock()
			}
		})
		p.pipelined.Add(used.Load())
		if len(missing) > 0 {
			// Only if a row did not match what the pipeline saw: look its
			// owners up like any other.
			more := map[any]struct{}{}
			for _, o := range missing {
				more[o] = struct{}{}
			}
			k2, e2, ok := p.resolveOwners(db, more, nil)
			if !ok {
				zeroRows(rv, elemType, m)
				return
			}
			keys, kerrs = merge(keys, k2), merge(kerrs, e2)
		}
	}
	errs, stale := p.decryptAll(targets, keys, kerrs, cnt)
	errs = p.retryStale(db, errs, stale, cnt)
	p.observeDecrypted(cnt)
	if len(errs) > 0 {
		p.readErr(db, join(errs))
	}
}

// resolveOwners looks up the DEKs of owners. If the lookup fails it zeroes
// every token of targets, adds the error and reports false.
func (p *Plugin) resolveOwners(db *gorm.DB, owners map[any]struct{}, targets []target) (map[any]*ownerKey, map[any]error, bool) {
	if len(owners) == 0 {
		return nil, nil, true
	}
	list := make([]any, 0, len(owners))
	for o := range owners {
		list = append(list, o)
	}
	keys, kerrs, err := p.resolve(db, list, false)
	if err != nil && !errors.Is(err, ErrNoKey) {
		// The lookup failed: leave nothing readable behind.
		for _, t := range targets {
			if t.m != nil {
				zeroTokens(t)
			}
		}
		p.readErr(db, err)
		return nil, nil, false
	}
	if err != nil {
		kerrs = map[any]error{}
		for o := range owners {
			kerrs[o] = ErrNoKey
		}
	}
	return keys, kerrs, true
}

// decryptTargets resolves the owners' DEKs (one lookup for those not
// cached) and decrypts every target; a target without a model is skipped.
func (p *Plugin) decryptTargets(db *gorm.DB, targets []target, owners map[any]struct{}) {
	if len(targets) == 0 {
		return
	}
	keys, kerrs, ok := p.resolveOwners(db, owners, targets)
	if !ok {
		return
	}
	cnt := p.counts()
	errs, stale := p.decryptAll(targets, keys, kerrs, cnt)
	errs = p.retryStale(db, errs, stale, cnt)
	p.observeDecrypted(cnt)
	if len(errs) > 0 {
		p.readErr(db, join(errs))
	}
}

// target is one struct of a query result holding encrypted fields.
type target struct {
	m     *modelMeta
	v     reflect.Value
	owner any
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

// merge adds b's entries to a (a may be nil) and returns it.
func merge[V any](a, b map[any]V) map[any]V {
	if a == nil {
		return b
	}
	for k, v := range b {
		a[k] = v
	}
	return a
}

// preloadSink collects the read errors of a statement and of the preload
// statements GORM runs for it, which inherit its context.
type preloadSink struct {
	mu   sync.Mutex
	errs []error
}

// readErr reports the statement's decryption error. A statement with
// preloads, and each preload statement of it, hands its error to the
// statement's sink instead, added once the preloads have run
// (afterPreload): GORM runs no preload once a statement has an error, and
// assigns no preloaded row once a preload statement has one, so one row
// that cannot be read (a shredded owner) would leave every other row
// without its associations. The FieldErrors it holds are reported to the
// observer.
func (p *Plugin) readErr(db *gorm.DB, err error) {
	p.observeFailures(err)
	sink := sinkFor(db)
	if sink == nil {
		db.AddError(err)
		return
	}
	sink.mu.Lock()
	sink.errs = append(sink.errs, err)
	sink.mu.Unlock()
}

// sinkFor returns the sink the statement's read errors go to: the one of
// the statement it preloads for, or its own if it has preloads; nil if
// neither.
func sinkFor(db *gorm.DB) *preloadSink {
	if ss := stateIn(db.Statement.Context); ss != nil && ss.sink != nil {
		return ss.sink
	}
	if len(db.Statement.Preloads) == 0 {
		return nil
	}
	ss := ensureState(db)
	ss.sink, ss.ownSink = &preloadSink{}, true
	return ss.sink
}
