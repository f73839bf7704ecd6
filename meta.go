package envelope

import (
	"fmt"
	"reflect"
	"strings"

	"github.com/gorm-envelope/envelope/internal/profilemeta"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// SerializerName is the name to use in the tag gorm:"serializer:envelope".
const SerializerName = profilemeta.SerializerName

type valueKind uint8

const (
	kindString valueKind = iota + 1
	kindStringPtr
	kindBytes
)

type encField struct {
	f      *schema.Field
	kind   valueKind
	off    uintptr     // offset in the model struct, when direct
	direct bool        // reached without a pointer: readable at base+off
	idx    []*blindIdx // the blind indexes of its values
}

// modelMeta is computed once per schema: which fields are encrypted and
// which field names the owner.
type modelMeta struct {
	schema    *schema.Schema
	name      string
	owner     *schema.Field
	ownerAt   func(addr) any // reads the owner at a struct's address; nil if not direct
	allDirect bool           // every encrypted field is direct
	fields    []encField
	byDB      map[string]*encField
	indexes   []*blindIdx          // blind indexes (index.go)
	idxByDB   map[string]*blindIdx // by the index column
	profile   bool                 // the configured Profile model
	selfOwned bool                 // the owner is the model's own primary key
	bound     bool                 // values are written in the bound format
	table     string               // the table its values are bound to (format.go)
	rowBound  bool                 // values are bound to their row's primary key too
	rowKey    *schema.Field        // where that key is read (envelope:"row"); nil if not bound, or not in a projection
	// uniqueKeys are the model's declared unique keys other than its
	// primary key (unique fields and unique indexes), by DB names.
	uniqueKeys [][]string
	err        error // a definition error, reported by every statement on the model
}

func isEnvelopeField(f *schema.Field) bool {
	return strings.EqualFold(f.TagSettings["SERIALIZER"], SerializerName)
}

var (
	typeString    = reflect.TypeOf("")
	typeStringPtr = reflect.TypeOf((*string)(nil))
	typeBytes     = reflect.TypeOf([]byte(nil))
)

func buildMeta(s *schema.Schema, prof *profilemeta.Profile, format Format) *modelMeta {
	m := &modelMeta{schema: s, name: s.Name, table: s.Table, byDB: map[string]*encField{}, idxByDB: map[string]*blindIdx{}, profile: prof != nil && s.ModelType == prof.Type}
	for _, f := range s.Fields {
		if profilemeta.TagValue(f) == "owner" {
			if m.owner != nil {
				m.err = fmt.Errorf("envelope: model %s: more than one field tagged envelope:\"owner\"", s.Name)
				return m
			}
			m.owner = f
		}
		if !isEnvelopeField(f) {
			continue
		}
		var k valueKind
		switch f.FieldType {
		case typeString:
			k = kindString
		case typeStringPtr:
			k = kindStringPtr
		case typeBytes:
			k = kindBytes
		default:
			m.err = fmt.Errorf("envelope: model %s: field %s: serializer:envelope supports string, *string and []byte, not %s", s.Name, f.Name, f.FieldType)
			return m
		}
		m.fields = append(m.fields, encField{f: f, kind: k})
	}
	for i := range m.fields {
		ef := &m.fields[i]
		if db := ef.f.DBName; db != "" {
			m.byDB[db] = ef
		}
		ef.off, ef.direct = offsetOf(s.ModelType, ef.f.StructField.Index)
	}
	if err := parseIndexes(m, s); err != nil {
		m.err = err
		return m
	}
	if err := parseRowBinding(m, s); err != nil {
		m.err = err
		return m
	}
	m.bound = format == FormatBound || m.rowBound
	m.allDirect = true
	for i := range m.fields {
		m.allDirect = m.allDirect && m.fields[i].direct
	}
	if m.owner != nil {
		m.selfOwned = m.owner.PrimaryKey
		if off, ok := offsetOf(s.ModelType, m.owner.StructField.Index); ok {
			m.ownerAt = ownerReader(m.owner.FieldType, off)
		}
	}
	if len(m.fields) > 0 {
		m.uniqueKeys = uniqueKeys(s)
	}
	if len(m.fields) > 0 && m.owner != nil {
		if !profilemeta.IsOwnerKind(m.owner.IndirectFieldType.Kind()) {
			m.err = fmt.Errorf("envelope: model %s: owner field %s must be an integer or a string, not %s", s.Name, m.owner.Name, m.owner.FieldType)
		} else if prof != nil && isStringOwner(m.owner) != isStringOwner(prof.Owner) {
			// Owners are looked up in the profile table by value: a string
			// never matches an integer column (or the reverse).
			m.err = fmt.Errorf("%w: model %s: owner field %s is %s, profile owner %s.%s is %s: both owners must be integers, or both strings",
				ErrNoOwner, s.Name, m.owner.Name, m.owner.FieldType, prof.Schema.Name, prof.Owner.Name, prof.Owner.FieldType)
		}
	}
	return m
}

func tagValue(f *schema.Field) string { return profilemeta.TagValue(f) }

func isStringOwner(f *schema.Field) bool { return f.IndirectFieldType.Kind() == reflect.String }

// ownerless returns the error for a model that has encrypted fields but
// no owner field, or nil.
func (m *modelMeta) ownerless() error {
	if len(m.fields) > 0 && m.owner == nil {
		return fmt.Errorf("%w: model %s has encrypted fields but no field tagged envelope:\"owner\"", ErrNoOwner, m.name)
	}
	return nil
}

// metaOf returns the cached metadata of a parsed schema.
func (p *Plugin) metaOf(s *schema.Schema) *modelMeta {
	if v, ok := p.metas.Load(s); ok {
		return v.(*modelMeta)
	}
	m := buildMeta(s, p.prof, p.cfg.Format)
	v, _ := p.metas.LoadOrStore(s, m)
	if len(m.fields) > 0 {
		p.tables.Store(s.Table, m)
	}
	return v.(*modelMeta)
}

// metaOfType returns the metadata of a struct type, parsing it with the
// statement's schema cache; nil if it is not a model.
func (p *Plugin) metaOfType(db *gorm.DB, t reflect.Type) *modelMeta {
	if v, ok := p.typeMetas.Load(t); ok {
		return v.(*modelMeta)
	}
	stmt := &gorm.Statement{DB: db}
	var m *modelMeta
	if err := stmt.Parse(reflect.New(t).Interface()); err == nil {
		m = p.metaOf(stmt.Schema)
	}
	v, _ := p.typeMetas.LoadOrStore(t, m)
	return v.(*modelMeta)
}

// ownerOf returns the normalised owner of struct value v: int64 for
// integer owners, string for string owners; nil when zero or unknown.
func (m *modelMeta) ownerOf(v reflect.Value) any {
	if m == nil || m.owner == nil || !v.IsValid() {
		return nil
	}
	if m.ownerAt != nil {
		if p := m.base(v); p != nil {
			return m.ownerAt(p)
		}
	}
	fv, ok := fieldValue(m.owner, v)
	if !ok {
		return nil
	}
	return normOwner(fv)
}

// fieldValue reads a field of struct v without panicking on a nil embedded pointer.
// GORM marks a step through an embedded pointer with a negative index
// (-i-1).
func fieldValue(f *schema.Field, v reflect.Value) (reflect.Value, bool) {
	v = reflect.Indirect(v)
	for _, i := range f.StructField.Index {
		i, _ = structIndex(i)
		if v.Kind() == reflect.Pointer {
			if v.IsNil() {
				return reflect.Value{}, false
			}
			v = v.Elem()
		}
		v = v.Field(i)
	}
	return v, true
}

func normOwner(v reflect.Value) any {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	switch v.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if n := v.Int(); n != 0 {
			return n
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if n := v.Uint(); n != 0 {
			return int64(n)
		}
	case reflect.String:
		if s := v.String(); s != "" {
			return s
		}
	}
	return nil
}

// normOwnerAny normalises an owner given as a plain value (a map entry).
func normOwnerAny(x any) any {
	if x == nil {
		return nil
	}
	return normOwner(reflect.ValueOf(x))
}

// uniqueKeys returns the unique keys s declares besides its primary key.
func uniqueKeys(s *schema.Schema) [][]string {
	var keys [][]string
	for _, f := range s.Fields {
		if f.Unique && !f.PrimaryKey {
			keys = append(keys, []string{f.DBName})
		}
	}
	for _, idx := range schemaIndexes(s) {
		if idx.Class == "UNIQUE" || idx.Option == "UNIQUE" {
			cols := make([]string, 0, len(idx.Fields))
			for _, f := range idx.Fields {
				cols = append(cols, f.DBName)
			}
			keys = append(keys, cols)
		}
	}
	return keys
}
