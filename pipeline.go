package envelope

import (
	"reflect"
	"runtime"
	"sync"
	"sync/atomic"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"github.com/gorm-envelope/envelope/internal/token"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// Decrypting while scanning.
//
// GORM scans a result row by row on one goroutine, and afterQuery can only
// start once the last row is in. For a Find into a new slice, the
// serializer's Scan hands the tokens of every pipeRows complete rows to a
// worker goroutine, which decrypts them on another core while the scan
// goes on, with DEKs already in the cache. afterQuery then uses a worker's
// plaintext only when it resolved the very same key for the row's owner and
// the field still holds the very same token string; anything else (a cold
// owner, a shredded one, a row GORM did not scan into a new struct) takes
// the ordinary path, so the result and its errors do not depend on what the
// workers managed to do.

// pipeRows is the number of rows in one batch handed to a worker.
const pipeRows = 256

// pipelineOn switches the pipeline (tests compare results without it).
var pipelineOn = true

type pipeItem struct {
	tok string    // the token as scanned, "" for NULL
	k   *ownerKey // the key that opened it; nil if the worker did not
	msg []byte
}

type pipeBatch struct {
	rows  []reflect.Value // per row: the new struct GORM scanned it into
	items []pipeItem      // row*nf + field index
	oi    []int32         // per row: index in owners, -1 for no owner

	// Filled by the worker: the batch's distinct owners, the key the cache
	// held for each, and whether any of its rows holds a token.
	owners []any
	keys   []*ownerKey
	hasTok []bool
	otext  []string // the owners as text, for bound values; "" until needed
	valid  []bool   // filled by validate: keys[j] is the key afterQuery resolved
}

// readState is one query's pipeline; it lives in the statement's context
// from the before-query callback to afterQuery.
type readState struct {
	p       *Plugin
	m       *modelMeta
	stmt    *gorm.Statement
	nf      int
	next    int          // the field index expected next
	ptrType reflect.Type // *Model: what GORM scans each row into

	off     bool    // the scan is not one row per new struct: do nothing
	cur     uintptr // the address of the row being scanned
	rows    int     // rows begun in the current batch
	batch   *pipeBatch
	sent    []*pipeBatch // dispatched batches, in row order
	ch      chan *pipeBatch
	workers int
	cold    atomic.Bool // a batch had no owner with a cached DEK
	wg      sync.WaitGroup
}

// beforeQuery starts a pipeline for a Find into a slice of the statement's
// model, whose rows GORM scans into new structs.
func (p *Plugin) beforeQuery(db *gorm.DB) {
	stmt := db.Statement
	if db.Error != nil || p.keys == nil || db.DryRun || stmt.Schema == nil || len(stmt.Joins) > 0 || !stmt.ReflectValue.IsValid() {
		return
	}
	rv := reflect.Indirect(stmt.ReflectValue)
	if rv.Kind() != reflect.Slice || rv.Len() != 0 {
		return
	}
	et := rv.Type().Elem()
	if et.Kind() == reflect.Pointer {
		et = et.Elem()
	}
	if et != stmt.Schema.ModelType {
		return
	}
	m := p.metaOf(stmt.Schema)
	// The rows' fields must be reachable at offsets (no embedded pointer):
	// otherwise apply could use none of the workers' results.
	if !pipelineOn || m.err != nil || len(m.fields) == 0 || m.owner == nil || !m.allDirect || runtime.GOMAXPROCS(0) < 2 {
		return
	}
	ensureState(db).read = &readState{p: p, m: m, stmt: stmt, nf: len(m.fields), ptrType: reflect.PointerTo(m.schema.ModelType)}
}

// endPipeline takes the statement's pipeline out of its state and waits
// for its workers; nil when the statement has none.
func endPipeline(db *gorm.DB) *readState {
	ss := stateOf(db)
	if ss == nil || ss.read == nil {
		return nil
	}
	rs := ss.read
	ss.read = nil
	if rs.ch != nil {
		// A large result: its last rows make one more batch, and this
		// goroutine helps the workers finish rather than wait for them.
		if !rs.off && rs.batch != nil && rs.rows > 0 {
			rs.sent = append(rs.sent, rs.batch)
			rs.ch <- rs.batch
			rs.batch = nil
		}
		close(rs.ch)
		for b := range rs.ch {
			rs.work(b)
		}
	}
	rs.wg.Wait()
	if rs.off {
		rs.release()
		return nil
	}
	return rs
}

// scan stores a string column value at the field's offset in the new row
// struct and records its token, skipping GORM's reflection; false if the
// value or field is not of that simple kind (the caller then stores it and
// calls scanned).
func (rs *readState) scan(field *schema.Field, dst reflect.Value, dbValue any) bool {
	if rs.off || dst.Kind() != reflect.Pointer || dst.Type() != rs.ptrType {
		return false
	}
	j := rs.fieldIndex(field)
	if j < 0 || !rs.m.fields[j].direct || rs.m.fields[j].kind != kindString {
		return false
	}
	var tok string
	switch v := dbValue.(type) {
	case nil:
	case string:
		tok = v
	case []byte:
		tok = string(v)
	default:
		return false
	}
	setStringAt(dst.UnsafePointer(), rs.m.fields[j].off, tok)
	rs.record(j, dst, tok)
	return true
}

// scanned records the token GORM just scanned into field of the row dst.
func (rs *readState) scanned(field *schema.Field, dst reflect.Value, tok string) {
	if rs.off {
		return
	}
	if j := rs.fieldIndex(field); j >= 0 {
		rs.record(j, dst, tok)
	}
}

// fieldIndex returns the index of field among the model's encrypted
// fields, or -1. GORM scans a row's fields in one order: the one after the
// last is tried first.
func (rs *readState) fieldIndex(field *schema.Field) int {
	j := rs.next
	if rs.m.fields[j].f != field {
		j = -1
		for i := range rs.m.fields {
			if rs.m.fields[i].f == field {
				j = i
				break
			}
		}
		if j < 0 {
			return -1
		}
	}
	rs.next = (j + 1) % rs.nf
	return j
}

// record notes tok as field j of the row dst.
func (rs *readState) record(j int, dst reflect.Value, tok string) {
	if dst.Kind() != reflect.Pointer {
		rs.off = true
		return
	}
	if p := dst.Pointer(); p != rs.cur {
		// A new row: every earlier row is complete.
		if rs.cold.Load() {
			// A worker found none of a batch's owners cached: this is a
			// cold read, for which the scan would only be slowed down.
			rs.off = true
			return
		}
		if rs.batch == nil || rs.rows == pipeRows {
			if rs.batch != nil {
				rs.dispatch()
			}
			rs.batch = getBatch(rs.nf)
			rs.rows = 0
		}
		rs.cur = p
		rs.batch.rows[rs.rows] = dst
		rs.rows++
	}
	rs.batch.items[(rs.rows-1)*rs.nf+j].tok = tok
}

var batchPool sync.Pool

func getBatch(nf int) *pipeBatch {
	if b, ok := batchPool.Get().(*pipeBatch); ok && len(b.items) == pipeRows*nf {
		return b
	}
	return &pipeBatch{rows: make([]reflect.Value, pipeRows), items: make([]pipeItem, pipeRows*nf), oi: make([]int32, pipeRows)}
}

// release returns the pipeline's batches to the pool, holding nothing of
// the result.
func (rs *readState) release() {
	if rs == nil {
		return
	}

	for _, b := range append(rs.sent, rs.batch) {
		if b != nil {
			clear(b.rows)
			clear(b.items)
			clear(b.owners)
			clear(b.keys)
			clear(b.otext)
			b.owners, b.keys, b.hasTok, b.otext, b.valid = b.owners[:0], b.keys[:0], b.hasTok[:0], b.otext[:0], b.valid[:0]
			batchPool.Put(b)
		}
	}
	rs.sent, rs.batch = nil, nil
}

// dispatch queues the current batch for the workers, starting one more
// worker while there are fewer than GOMAXPROCS-1: the scanning goroutine
// keeps a core of its own, and a batch never waits behind it.
func (rs *readState) dispatch() {
	b := rs.batch
	rs.sent = append(rs.sent, b)
	if rs.ch == nil {
		rs.ch = make(chan *pipeBatch, 64)
	}
	if rs.workers < max(runtime.GOMAXPROCS(0)-1, 1) {
		rs.workers++
		rs.wg.Add(1)
		go func() {
			defer rs.wg.Done()
			for b := range rs.ch {
				rs.work(b)
			}
		}()
	}
	rs.ch <- b
}

// work decrypts a batch with the DEKs the cache holds. The batch's rows
// are complete and the scan no longer writes them, so their owners can be
// read here. It only reads the cache (no counters, no LRU refresh):
// afterQuery resolves the keys as usual and takes a result only if it got
// the same key.
func (rs *readState) work(b *pipeBatch) {
	idx := make(map[any]int32)
	var ar arena
	cached := false
	for r, v := range b.rows {
		if !v.IsValid() {
			break
		}
		o := rs.m.ownerOf(v)
		if o == nil {
			b.oi[r] = -1
			continue
		}
		j, seen := idx[o]
		if !seen {
			j = int32(len(b.owners))
			idx[o] = j
			k, _ := rs.p.store.Peek(o)
			b.owners, b.keys, b.hasTok, b.otext = append(b.owners, o), append(b.keys, k), append(b.hasTok, false), append(b.otext, "")
		}
		b.oi[r] = j
		k := b.keys[j]
		usable := k != nil && !k.Shredded && k.C != nil
		cached = cached || usable
		var otext, row string
		rowRead := false
		for i := range rs.nf {
			it := &b.items[r*rs.nf+i]
			if it.tok == "" {
				continue
			}
			bv := isBoundValue(it.tok)
			if !bv && !token.LooksLikeString(it.tok) {
				continue
			}
			b.hasTok[j] = true
			if !usable {
				continue
			}
			if bv && !rowRead {
				if otext = b.otext[j]; otext == "" {
					otext = keystore.OwnerText(o)
					b.otext[j] = otext
				}
				row, rowRead = rs.m.rowOf(v), true
			}
			if msg, err := ar.open(rs.m, k, &rs.m.fields[i], otext, row, it.tok, bv, len(b.items)-r*rs.nf-i); err == nil {
				it.k, it.msg = k, msg
			}
		}
	}
	if !cached {
		rs.cold.Store(true)
	}
}

// covered returns how many of a result's n rows the pipeline's batches
// cover (0 without a pipeline).
func (rs *readState) covered(n int) int {
	if rs == nil {
		return 0
	}
	return min(len(rs.sent)*pipeRows, n)
}

// owners returns the owners of the covered rows that hold a token.
func (rs *readState) owners() map[any]struct{} {
	out := map[any]struct{}{}
	if rs == nil {
		return out
	}
	for _, b := range rs.sent {
		for j, o := range b.owners {
			if b.hasTok[j] {
				out[o] = struct{}{}
			}
		}
	}
	return out
}

// validate marks, per batch and owner, whether the worker's key is the one
// afterQuery resolved.
func (rs *readState) validate(keys map[any]*ownerKey, kerrs map[any]error) {
	for _, b := range rs.sent {
		b.valid = b.valid[:0]
		for j, o := range b.owners {
			k := b.keys[j]
			b.valid = append(b.valid, k != nil && keys[o] == k && kerrs[o] == nil)
		}
	}
}

// apply fills row r of the result, the struct v, with the plaintexts the
// pipeline opened for it, and returns how many it set. It sets nothing and
// returns -1 unless every encrypted field of v holds exactly the token the
// worker opened (or is empty where the scan was NULL), under the key
// afterQuery resolved for the row's owner: such a row is decrypted the
// ordinary way. With cnt (one count per encrypted field; nil: not
// counted), the values set are counted per field.
func (rs *readState) apply(r int, v reflect.Value, cnt []int) int {
	b := rs.sent[r/pipeRows]
	ri := r % pipeRows
	oi := b.oi[ri]
	if oi < 0 || !b.valid[oi] {
		return -1
	}
	base := rs.m.base(v)
	if base == nil {
		return -1
	}
	items := b.items[ri*rs.nf : (ri+1)*rs.nf]
	n := 0
	for j := range items {
		it := &items[j]
		txt := rs.m.fields[j].textAt(base)
		if !sameString(txt, it.tok) {
			return -1
		}
		if txt == "" {
			continue
		}
		if it.k == nil {
			return -1
		}
		n++
	}
	for j := range items {
		if it := &items[j]; it.tok != "" {
			rs.m.fields[j].setAt(base, it.msg)
			if cnt != nil {
				cnt[j]++
			}
		}
	}
	return n
}

// arena hands out the memory of decrypted values from shared chunks, so
// that many small values cost one allocation. A chunk is sized for the
// values still to come (at most arenaChunk bytes); values are returned
// with their capacity cut, so appending to one cannot touch another.
type arena struct{ buf []byte }

const arenaChunk = 16 << 10

// open opens stored, a value of field ef of model m owned by the owner
// whose text is owner, in the row whose key text is row, with k; left is
// the number of values still to be decrypted into this arena, this one
// included.
func (a *arena) open(m *modelMeta, k *ownerKey, ef *encField, owner, row string, stored string, bv bool, left int) ([]byte, error) {
	need := openedLen(stored, bv)
	if cap(a.buf)-len(a.buf) < need {
		a.buf = make([]byte, 0, max(min(need*left, arenaChunk), need))
	}
	start := len(a.buf)
	out, err := m.openInto(a.buf, k, ef, owner, row, stored, bv)
	if err != nil {
		return nil, err
	}
	a.buf = out
	return out[start:len(out):len(out)], nil
}
