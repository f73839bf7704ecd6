package envelope

import (
	"fmt"
	"reflect"
	"time"

	"github.com/gorm-envelope/envelope/internal/keystore"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

func (p *Plugin) beforeCreate(db *gorm.DB) {
	p.profileWrite(db)
	m := p.statementMeta(db)
	if m == nil {
		return
	}
	if m.profile {
		p.giveProfilesDEKs(db)
	}
	if len(m.fields) == 0 {
		return
	}
	// Each inserted row's owner is the one it is inserted with: the
	// statement's model (db.Model(&T{UserID: 5}).Create(...)) is not
	// written, so it names no row's owner.
	c := &collector{p: p, db: db, m: m, written: createWritten(db.Statement)}
	if len(m.indexes) > 0 && !c.coverIndexes() {
		c.finish()
		return
	}
	if !c.addMaps(db.Statement.Dest) {
		c.walk(db.Statement.ReflectValue)
	}
	c.onConflict()
	c.finish()
}

func (p *Plugin) beforeUpdate(db *gorm.DB) {
	p.profileWrite(db)
	m := p.statementMeta(db)
	if m == nil || len(m.fields) == 0 {
		return
	}
	c := &collector{p: p, db: db, m: m, update: true}
	c.defOwner, c.ambig = p.modelOwner(db, m, db.Statement.ReflectValue)
	if m.rowKey != nil {
		if v := reflect.Indirect(db.Statement.ReflectValue); v.Kind() == reflect.Struct && v.Type() == m.schema.ModelType {
			c.defRow = m.rowOf(v)
		}
	}
	if len(m.indexes) > 0 {
		c.addressableDest()
	}
	ws := c.updateSet()
	if !c.checkUpdate(ws) {
		c.finish()
		return
	}
	c.written = func(f *schema.Field) bool { return ws.cols[f.DBName] }
	if len(m.indexes) > 0 && !c.coverIndexes() {
		c.finish()
		return
	}
	if !c.addMaps(db.Statement.Dest) {
		c.checkArgType(reflect.ValueOf(db.Statement.Dest))
		c.walk(reflect.ValueOf(db.Statement.Dest))
	}
	c.finish()
}

// afterWrite puts back what the statement borrowed and, once a transaction
// the statement started has committed, caches the DEKs it loaded.
func (p *Plugin) afterWrite(db *gorm.DB) {
	ss := endState(db)
	if ss == nil {
		return
	}
	for _, e := range ss.edits {
		if e.undo != nil {
			e.undo()
		}
	}
	if db.Error != nil && db.Statement.Schema != nil {
		if m := p.metaOf(db.Statement.Schema); len(m.indexes) > 0 {
			if err := m.duplicate(db.Error); err != nil {
				db.Error = err
			}
		}
	}
	if st := ss.write; st != nil {
		if st.refusal != nil {
			// The driver's error may describe the refused value's
			// argument: report the plugin's own instead.
			db.Error = st.refusal
		}
		p.endSelf(db, st)
	}
	if db.Error == nil {
		p.store.Commit(ss.pending)
	}
}

func (p *Plugin) statementMeta(db *gorm.DB) *modelMeta {
	if db.Error != nil {
		return nil
	}
	if db.Statement.Schema == nil {
		p.guardTableWrite(db)
		return nil
	}
	m := p.metaOf(db.Statement.Schema)
	err := m.err
	if err == nil {
		err = m.ownerless()
	}
	if err != nil {
		db.AddError(err)
		return nil
	}
	return m
}

// modelOwner returns the single owner of the statement's model value, and
// whether it holds several.
func (p *Plugin) modelOwner(db *gorm.DB, m *modelMeta, v reflect.Value) (owner any, ambiguous bool) {
	v = reflect.Indirect(v)
	switch v.Kind() {
	case reflect.Struct:
		if v.Type() == db.Statement.Schema.ModelType {
			return m.ownerOf(v), false
		}
	case reflect.Slice, reflect.Array:
		for i := 0; i < v.Len(); i++ {
			o, _ := p.modelOwner(db, m, v.Index(i))
			if o == nil {
				continue
			}
			if owner != nil && owner != o {
				return nil, true
			}
			owner = o
		}
	}
	return owner, false
}

// collector gathers the plaintext values of one write statement.
type collector struct {
	p        *Plugin
	db       *gorm.DB
	m        *modelMeta
	defOwner any
	ambig    bool                     // the statement's model holds several owners
	written  func(*schema.Field) bool // whether a field's column is written; nil: all
	pinned   any                      // the owner the update is pinned to, if any
	items    []item
	self     []selfRow // self-owned rows whose id the insert assigns
	update   bool      // an UPDATE, not an INSERT
	defRow   string    // an update's row (its model's primary key), for a row-bound model
	indexed  bool      // some item has blind indexes to fill
	edits    []edit
	errs     []error
}

func (c *collector) fail(err error) { c.errs = append(c.errs, err) }

func (c *collector) noOwner(m *modelMeta, f *schema.Field) {
	why := ErrNoOwner
	if m.owner == nil && c.defOwner == nil {
		c.fail(fmt.Errorf("%w: model %s has no field tagged envelope:\"owner\"", ErrNoOwner, m.name))
		return
	}
	if c.ambig {
		c.fail(&FieldError{Model: m.name, Field: f.Name, Err: fmt.Errorf("%w: the statement's rows belong to several owners", why)})
		return
	}
	c.fail(&FieldError{Model: m.name, Field: f.Name, Err: fmt.Errorf("%w: owner is zero", why)})
}

// rowFor returns the key text of the row a value of struct v of model m
// is sealed for: v's primary key, or for an update of m given without it,
// the updated model's.
func (c *collector) rowFor(m *modelMeta, v reflect.Value) string {
	if r := m.rowOf(v); r != "" {
		return r
	}
	if c.update && m.table == c.m.table {
		return c.defRow
	}
	return ""
}

// walk collects every encrypted field of every struct in v.
func (c *collector) walk(v reflect.Value) {
	v = reflect.Indirect(v)
	switch v.Kind() {
	case reflect.Slice, reflect.Array:
		if c.items == nil {
			c.items = make([]item, 0, v.Len()*len(c.m.fields))
		}
		for i := 0; i < v.Len(); i++ {
			c.walk(v.Index(i))
		}
	case reflect.Struct:
		m := c.m
		if v.Type() != c.db.Statement.Schema.ModelType {
			m = c.p.metaOfType(c.db, v.Type())
			if m == nil {
				return
			}
			if m.err != nil {
				c.fail(m.err)
				return
			}
			m = c.p.projection(c.m, m)
		}
		if len(m.fields) == 0 {
			return
		}
		owner := m.ownerOf(v)
		if owner == nil {
			owner = c.defOwner
		}
		var self *selfRow
		if owner == nil && c.deferSelf(m, v) {
			c.self = append(c.self, selfRow{m: m, v: v})
			self = &c.self[len(c.self)-1]
		}
		if len(m.indexes) > 0 && !c.checkIndexes(m, v) {
			return
		}
		base := m.base(v)
		for i := range m.fields {
			ef := &m.fields[i]
			if c.written != nil && !c.written(ef.f) {
				continue
			}
			var plain string
			var isNil bool
			var addr uintptr
			if base != nil && ef.direct {
				plain, isNil = ef.plainAt(base)
				addr = uintptr(base) + ef.off
			} else {
				fv, ok := fieldValue(ef.f, v)
				if !ok {
					continue
				}
				plain, isNil = plainOfValue(fv, ef.kind)
				addr = addrOf(fv)
			}
			if isNil || self != nil {
				// A NULL source has a NULL index; a self-owned row's
				// index is written with its source, after the insert.
				if !c.clearIndexes(m, ef, v) {
					return
				}
			}
			if isNil {
				continue
			}
			if self != nil {
				self.vals = append(self.vals, selfVal{ef: ef, plain: plain, addr: addr})
				continue
			}
			if owner == nil {
				c.noOwner(m, ef.f)
				return
			}
			it := item{owner: owner, m: m, f: ef.f, plain: plain, addr: addr, enc: ef}
			if m.rowBound {
				if it.rowID = c.rowFor(m, v); it.rowID == "" {
					c.fail(m.errRowUnknown(ef))
					return
				}
			}
			if len(ef.idx) > 0 {
				it.row, it.ef, c.indexed = v, ef, true
			}
			c.items = append(c.items, it)
		}
	}
}

// finish resolves the owners' DEKs, starts encrypting every collected value
// and installs them for the serializer. On any error it adds one error to
// the statement, so nothing is written.
func (c *collector) finish() {
	db := c.db
	installed := false
	defer func() {
		if !installed {
			for _, e := range c.edits {
				if e.undo != nil {
					e.undo()
				}
			}
		}
	}()
	if len(c.errs) > 0 {
		c.p.addErr(db, join(c.errs))
		return
	}
	if len(c.items) == 0 {
		if len(c.self) > 0 || c.pinned != nil || len(c.edits) > 0 {
			installed = c.install(&writeState{p: c.p, db: db, m: c.m, defOwner: c.defOwner})
		}
		return
	}
	owners := distinctOwners(c.items)
	keys, kerrs, err := c.p.resolve(db, owners, true)
	if err != nil {
		c.p.observeItemsFailed(c.items, err)
		db.AddError(err)
		return
	}
	// Every value gets its own token (random IV), so equal plaintexts do
	// not show as equal tokens. Errors are reported once per owner and
	// field.
	ciphers := make([]*ownerKey, len(c.items))
	var otext string
	type failKey struct {
		owner any
		f     *schema.Field
	}
	var failed map[failKey]bool
	var lastOwner any
	var k *ownerKey
	var kerr error
	for i := range c.items {
		it := &c.items[i]
		if i == 0 || it.owner != lastOwner {
			lastOwner, k, kerr, otext = it.owner, keys[it.owner], kerrs[it.owner], ""
		}
		if it.m.bound {
			if otext == "" {
				otext = keystore.OwnerText(it.owner)
			}
			it.otext = otext
		}
		if kerr == nil && (k == nil || k.Shredded) {
			kerr = ErrShredded
		}
		if kerr != nil {
			fk := failKey{it.owner, it.f}
			if !failed[fk] {
				if failed == nil {
					failed = map[failKey]bool{}
				}
				failed[fk] = true
				c.fail(&FieldError{Model: it.m.name, Field: it.f.Name, Owner: it.owner, Err: kerr})
			}
			continue
		}
		ciphers[i] = k
	}
	if len(c.errs) > 0 {
		c.p.addErr(db, join(c.errs))
		return
	}
	if c.indexed {
		if err := c.fillIndexes(keys); err != nil {
			c.p.addErr(db, err)
			return
		}
	}
	// Sealing starts now, on other cores for a large statement, and the
	// serializer waits only for the values it is asked for.
	sl, err := newSealer(c.items, ciphers, time.Now().Unix())
	if err != nil {
		db.AddError(err)
		return
	}
	sl.start()
	installed = c.install(&writeState{p: c.p, db: db, m: c.m, defOwner: c.defOwner, items: c.items, sealer: sl})
	if installed {
		c.p.observeEncrypted(c.items)
	}
}

// install puts the write state in the statement's context for the
// serializer, replaces the map and clause values collected, and prepares
// the self-owned rows' sealing after the insert.
func (c *collector) install(st *writeState) bool {
	db := c.db
	if len(c.self) > 0 && !c.beginSelf(st) {
		return false
	}
	ss := ensureState(db)
	ss.write, ss.edits = st, c.edits
	for _, e := range c.edits {
		if e.put != nil {
			v, _ := e.f.ValueOf(db.Statement.Context, e.tmp)
			e.put(v)
		}
	}
	st.pinned = c.pinned
	return true
}
