// Package profilemeta finds, in an app's Profile model, the table and the
// columns that hold each owner's encrypted DEK.
package profilemeta

import (
	"errors"
	"fmt"
	"reflect"
	"strings"

	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// Tag is the struct tag key that marks the owner and DEK fields.
const Tag = "envelope"

// SerializerName is the serializer of encrypted fields (envelope.SerializerName).
const SerializerName = "envelope"

// Profile describes a parsed Profile model.
type Profile struct {
	Schema *schema.Schema
	Type   reflect.Type // the struct type
	Table  string
	ID     *schema.Field // primary key (single column)
	Owner  *schema.Field // envelope:"owner", unique
	DEK    *schema.Field // envelope:"dek", []byte
}

// TagValue returns the envelope tag's value of f ("owner", "dek" or "").
func TagValue(f *schema.Field) string {
	return strings.TrimSpace(f.Tag.Get(Tag))
}

// Parse validates model as a Profile model: one primary key, one unique
// field tagged envelope:"owner" of an integer or string kind, one []byte
// field tagged envelope:"dek", and no encrypted field.
func Parse(db *gorm.DB, model any) (*Profile, error) {
	if model == nil {
		return nil, errors.New("envelope: Config.Profile is nil: pass the app's profile model, e.g. &Profile{}")
	}
	stmt := &gorm.Statement{DB: db}
	if err := stmt.Parse(model); err != nil {
		return nil, fmt.Errorf("envelope: profile model: %w", err)
	}
	s := stmt.Schema
	p := &Profile{Schema: s, Type: s.ModelType, Table: s.Table}
	name := s.Name
	for _, f := range s.Fields {
		switch TagValue(f) {
		case "owner":
			if p.Owner != nil {
				return nil, fmt.Errorf("envelope: profile model %s: more than one field tagged envelope:\"owner\"", name)
			}
			p.Owner = f
		case "dek":
			if p.DEK != nil {
				return nil, fmt.Errorf("envelope: profile model %s: more than one field tagged envelope:\"dek\"", name)
			}
			p.DEK = f
		}
	}
	if p.Owner == nil {
		return nil, fmt.Errorf("envelope: profile model %s: no field tagged envelope:\"owner\"", name)
	}
	if !IsOwnerKind(p.Owner.IndirectFieldType.Kind()) {
		return nil, fmt.Errorf("envelope: profile model %s: owner field %s must be an integer or a string, not %s", name, p.Owner.Name, p.Owner.FieldType)
	}
	if !p.Owner.Unique && !p.Owner.PrimaryKey && !hasUniqueIndex(s, p.Owner) {
		return nil, fmt.Errorf("envelope: profile model %s: owner field %s must be unique (add gorm:\"uniqueIndex\")", name, p.Owner.Name)
	}
	if p.DEK == nil {
		return nil, fmt.Errorf("envelope: profile model %s: no []byte field tagged envelope:\"dek\"", name)
	}
	if p.DEK.FieldType != reflect.TypeOf([]byte(nil)) {
		return nil, fmt.Errorf("envelope: profile model %s: DEK field %s must be []byte, not %s", name, p.DEK.Name, p.DEK.FieldType)
	}
	if p.DEK.Serializer != nil {
		return nil, fmt.Errorf("envelope: profile model %s: DEK field %s must not have a serializer", name, p.DEK.Name)
	}
	if len(s.PrimaryFields) != 1 {
		return nil, fmt.Errorf("envelope: profile model %s: needs exactly one primary key field", name)
	}
	// Encrypting a profile field needs the owner's DEK, which is stored in
	// the very row being written: such writes recursed (a string) or
	// inserted the row twice (a *string set on Create).
	for _, f := range s.Fields {
		if strings.EqualFold(f.TagSettings["SERIALIZER"], SerializerName) {
			return nil, fmt.Errorf("envelope: profile model %s: field %s is encrypted, but the profile holds the keys and cannot have encrypted fields (move them to another model)", name, f.Name)
		}
	}
	p.ID = s.PrimaryFields[0]
	return p, nil
}

// IsOwnerKind reports whether an owner field of this kind is supported.
func IsOwnerKind(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64,
		reflect.String:
		return true
	}
	return false
}

func hasUniqueIndex(s *schema.Schema, f *schema.Field) bool {
	for _, idx := range s.ParseIndexes() {
		if (idx.Class == "UNIQUE" || idx.Option == "UNIQUE") && len(idx.Fields) == 1 && idx.Fields[0].Field == f {
			return true
		}
	}
	return false
}
