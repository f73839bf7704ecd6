package envelope

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"time"

	"github.com/gorm-envelope/envelope/internal/token"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
	"gorm.io/gorm/schema"
)

type stateKey struct{}

// tokKey names one value of one statement: column, owner and plaintext.
type tokKey struct {
	col   string
	owner any
	plain string
}

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

// token returns the token prepared for the value plain of field, held at
// fv in the struct dst. A value is found by its field's address, and only
// if it is still the same column, plaintext and owner; else by column,
// owner and plaintext.
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

func (st *writeState) ownerFor(dst reflect.Value) any {
	dst = reflect.Indirect(dst)
	if dst.IsValid() && dst.Kind() == reflect.Struct {
		if o := st.p.metaOfType(st.db, dst.Type()).ownerOf(dst); o != nil {
			return o
		}
	}
	return st.defOwner
}

// item is one plaintext a statement writes.
type item struct {
	owner any
	m     *modelMeta
	f     *schema.Field
	plain string
	addr  uintptr // the address of the field holding it; 0 if none
}

// edit is a map entry or clause value replaced by a serializer value for
// the statement and put back afterwards.
type edit struct {
	f    *schema.Field
	tmp  reflect.Value // a model value holding the plaintext and owner
	put  func(any)
	undo func()
}

type restore struct {
	ctx   context.Context
	edits []edit
	st    *writeState
}

const restoreKey = "envelope:restore"

// internalKey marks the plugin's own statements that write tokens by table
// name (EncryptExisting).
const internalKey = "envelope:internal"

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
			c.items = append(c.items, item{owner: owner, m: m, f: ef.f, plain: plain, addr: addr})
		}
	}
}

func addrOf(fv reflect.Value) uintptr {
	if fv.CanAddr() {
		return fv.UnsafeAddr()
	}
	return 0
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

// addMap collects the encrypted entries of a map given to Create or
// Update(s); they are replaced by serializer values once tokens exist.
func (c *collector) addMap(mv map[string]any) {
	m := c.m
	s := c.db.Statement.Schema
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
		c.items = append(c.items, item{owner: owner, m: m, f: f, plain: plain, addr: addrOf(fv)})
		c.edits = append(c.edits, edit{f: f, tmp: tmp,
			put:  func(nv any) { mv[k] = nv },
			undo: func() { mv[k] = v },
		})
	}
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

// onConflict encrypts plain values in OnConflict DoUpdates assignments and
// refuses assignments that would copy a plain column into an encrypted one.
func (c *collector) onConflict() {
	cl, ok := c.db.Statement.Clauses["ON CONFLICT"]
	if !ok {
		return
	}
	oc, ok := cl.Expression.(clause.OnConflict)
	if !ok {
		return
	}
	m := c.m
	if len(c.self) > 0 && !c.cannotConflict(oc) {
		// A row the insert skips or turns into an update gets no id of
		// its own, or (MySQL) a wrong one: its values cannot be sealed.
		c.fail(&FieldError{Model: m.name, Err: fmt.Errorf("%w: an upsert of a self-owned row needs its id (the owner) set by the app", ErrUnsafe)})
		return
	}
	if len(c.self) > 0 {
		// No conflict can happen, so DO UPDATE never runs: drop it rather
		// than send its values (unsealed: there is no owner yet).
		if !oc.DoNothing {
			stmt := c.db.Statement
			orig := cl
			ncl := cl
			ncl.Expression = clause.OnConflict{Columns: oc.Columns, DoNothing: true}
			stmt.Clauses["ON CONFLICT"] = ncl
			c.edits = append(c.edits, edit{undo: func() { stmt.Clauses["ON CONFLICT"] = orig }})
		}
		return
	}
	if oc.DoNothing || (len(oc.DoUpdates) == 0 && !oc.UpdateAll) {
		return
	}
	if !c.checkUpsert() {
		return
	}
	var owner any
	ownerKnown := false
	for _, it := range c.items {
		if !ownerKnown {
			owner, ownerKnown = it.owner, true
		} else if owner != it.owner {
			owner = nil
		}
	}
	if !ownerKnown {
		owner = c.defOwner
	}
	changed := false
	set := make([]clause.Assignment, len(oc.DoUpdates))
	copy(set, oc.DoUpdates)
	for i, a := range set {
		ef := m.byDB[a.Column.Name]
		if ef == nil {
			continue
		}
		if col, ok := a.Value.(clause.Column); ok {
			if strings.EqualFold(col.Table, "excluded") && m.byDB[col.Name] != nil {
				continue
			}
			c.fail(&FieldError{Model: m.name, Field: ef.f.Name, Err: fmt.Errorf("%w: ON CONFLICT would copy column %q into an encrypted column", ErrUnsafe, col.Name)})
			continue
		}
		plain, isNil, _, err := mapPlain(a.Value)
		if err != nil {
			c.fail(&FieldError{Model: m.name, Field: ef.f.Name, Err: err})
			continue
		}
		if isNil {
			continue
		}
		if owner == nil {
			c.fail(&FieldError{Model: m.name, Field: ef.f.Name, Err: fmt.Errorf("%w: an ON CONFLICT assignment needs the rows of one owner", ErrNoOwner)})
			continue
		}
		tmp := reflect.New(c.db.Statement.Schema.ModelType).Elem()
		if err := m.owner.Set(c.db.Statement.Context, tmp, owner); err != nil {
			c.fail(&FieldError{Model: m.name, Field: ef.f.Name, Err: fmt.Errorf("%w: %v", ErrNoOwner, err)})
			continue
		}
		fv := setPlain(ef.f, tmp, ef.kind, plain)
		c.items = append(c.items, item{owner: owner, m: m, f: ef.f, plain: plain, addr: addrOf(fv)})
		i := i
		c.edits = append(c.edits, edit{f: ef.f, tmp: tmp, put: func(nv any) { set[i].Value = nv }})
		changed = true
	}
	if changed {
		orig := cl
		noc := oc
		noc.DoUpdates = set
		ncl := cl
		ncl.Expression = noc
		stmt := c.db.Statement
		stmt.Clauses["ON CONFLICT"] = ncl
		c.edits = append(c.edits, edit{undo: func() { stmt.Clauses["ON CONFLICT"] = orig }})
	}
}

// finish resolves the owners' DEKs, starts encrypting every collected value
// and installs them for the serializer. On any error it adds one error to
// the statement, so nothing is written.
func (c *collector) finish() {
	db := c.db
	if len(c.errs) > 0 {
		db.AddError(join(c.errs))
		return
	}
	if len(c.items) == 0 {
		if len(c.self) > 0 || c.pinned != nil {
			c.install(&writeState{p: c.p, db: db, m: c.m, defOwner: c.defOwner})
		}
		return
	}
	owners := distinctOwners(c.items)
	keys, kerrs, err := c.p.resolve(db, owners, true)
	if err != nil {
		db.AddError(err)
		return
	}
	// Every value gets its own token (random IV), so equal plaintexts do
	// not show as equal tokens. Errors are reported once per owner and
	// field.
	ciphers := make([]*token.Cipher, len(c.items))
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
			lastOwner, k, kerr = it.owner, keys[it.owner], kerrs[it.owner]
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
		ciphers[i] = k.C
	}
	if len(c.errs) > 0 {
		db.AddError(join(c.errs))
		return
	}
	// Sealing starts now, on other cores for a large statement, and the
	// serializer waits only for the values it is asked for.
	sl, err := newSealer(c.items, ciphers, time.Now().Unix())
	if err != nil {
		db.AddError(err)
		return
	}
	sl.start()
	c.install(&writeState{p: c.p, db: db, m: c.m, defOwner: c.defOwner, items: c.items, sealer: sl})
}

// install puts the write state in the statement's context for the
// serializer, replaces the map and clause values collected, and prepares
// the self-owned rows' sealing after the insert.
func (c *collector) install(st *writeState) {
	db := c.db
	if len(c.self) > 0 && !c.beginSelf(st) {
		return
	}
	r := &restore{ctx: db.Statement.Context}
	db.Statement.Context = context.WithValue(db.Statement.Context, stateKey{}, st)
	for _, e := range c.edits {
		if e.put != nil {
			v, _ := e.f.ValueOf(db.Statement.Context, e.tmp)
			e.put(v)
		}
	}
	r.edits = c.edits
	st.pinned = c.pinned
	r.st = st
	db.InstanceSet(restoreKey, r)
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
	if !c.addMaps(db.Statement.Dest) {
		c.walk(db.Statement.ReflectValue)
	}
	c.onConflict()
	c.finish()
}

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

func (p *Plugin) beforeUpdate(db *gorm.DB) {
	p.profileWrite(db)
	m := p.statementMeta(db)
	if m == nil || len(m.fields) == 0 {
		return
	}
	c := &collector{p: p, db: db, m: m}
	c.defOwner, c.ambig = p.modelOwner(db, m, db.Statement.ReflectValue)
	ws := c.updateSet()
	if !c.checkUpdate(ws) {
		c.finish()
		return
	}
	if !c.addMaps(db.Statement.Dest) {
		c.checkArgType(reflect.ValueOf(db.Statement.Dest))
		c.written = func(f *schema.Field) bool { return ws.cols[f.DBName] }
		c.walk(reflect.ValueOf(db.Statement.Dest))
	}
	c.finish()
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

// afterWrite puts back what the statement borrowed and, once a transaction
// the statement started has committed, caches the DEKs it loaded.
func (p *Plugin) afterWrite(db *gorm.DB) {
	if v, ok := db.InstanceGet(restoreKey); ok {
		r := v.(*restore)
		db.Statement.Context = r.ctx
		for _, e := range r.edits {
			if e.undo != nil {
				e.undo()
			}
		}
		instanceDelete(db, restoreKey)
		if st := r.st; st != nil {
			if st.refusal != nil {
				// The driver's error may describe the refused value's
				// argument: report the plugin's own instead.
				db.Error = st.refusal
			}

			p.endSelf(db, st)
		}
	}
	if v, ok := db.InstanceGet(pendingKey); ok {
		if db.Error == nil {
			p.store.Commit(v.(pendingKeys))
		}
		instanceDelete(db, pendingKey)
	}
}

// guardTableWrite refuses a write by table name alone (db.Table(...) with a
// map) that sets an encrypted column of a known model: without the model
// there is no serializer and no owner, and the value would be stored in
// plaintext.
func (p *Plugin) guardTableWrite(db *gorm.DB) {
	if _, internal := db.Get(internalKey); internal {
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
				db.AddError(&FieldError{Model: m.name, Field: ef.f.Name, Err: fmt.Errorf("%w: write %s through db.Model(&%s{}) so the value can be encrypted", ErrUnsafe, db.Statement.Table, m.name)})
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
