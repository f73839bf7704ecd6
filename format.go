package envelope

import (
	"fmt"
	"reflect"
	"strconv"

	"github.com/gorm-envelope/envelope/internal/bound"
	"github.com/gorm-envelope/envelope/internal/keystore"
	"github.com/gorm-envelope/envelope/internal/profilemeta"
	"github.com/gorm-envelope/envelope/internal/token"
	"gorm.io/gorm/schema"
)

// Format is the layout the plugin writes encrypted values in. Reads accept
// every format, told apart by the value's first byte, so changing
// Config.Format is an online change: values already stored keep opening,
// and [Reseal] rewrites them in the new format.
type Format uint8

const (
	// FormatFernet writes Fernet tokens under the owner's DEK: the
	// default, and the format TOM Toolkit reads.
	FormatFernet Format = iota
	// FormatBound writes bound values (docs/format.md, "Bound values"):
	// AES-256-GCM under a key derived from the owner's DEK, with the
	// table, column and owner (and, for a model whose primary key is
	// tagged envelope:"row", the row) as associated data, so a value
	// copied to another column, table or owner (or row) does not open.
	// Smaller and faster to open than a Fernet token; TOM Toolkit cannot
	// read it.
	FormatBound
)

func (f Format) String() string {
	switch f {
	case FormatFernet:
		return "fernet"
	case FormatBound:
		return "bound"
	}
	return "Format(" + strconv.Itoa(int(f)) + ")"
}

// looksSealed reports whether s has the shape of a value the plugin
// writes, in either format: a Fernet token or the text of a bound value.
func looksSealed(s string) bool {
	return token.LooksLikeString(s) || bound.IsBound(stringBytes(s))
}

// isBoundValue reports whether s has the shape of a bound value.
func isBoundValue(s string) bool { return bound.IsBound(stringBytes(s)) }

// rowTag is the tag of a primary key whose rows' values are bound to it.
const rowTag = "row"

// parseRowBinding reads the envelope:"row" tag: the model's values are
// then bound to their row's primary key as well, and written in the bound
// format whatever Config.Format says.
func parseRowBinding(m *modelMeta, s *schema.Schema) error {
	for _, f := range s.Fields {
		if tagValue(f) != rowTag {
			continue
		}
		switch {
		case !f.PrimaryKey:
			return fmt.Errorf("envelope: model %s: field %s: envelope:\"row\" goes on the primary key", s.Name, f.Name)
		case len(s.PrimaryFields) != 1:
			return fmt.Errorf("envelope: model %s: envelope:\"row\" needs a model with one primary key field", s.Name)
		case !profilemeta.IsOwnerKind(f.IndirectFieldType.Kind()):
			return fmt.Errorf("envelope: model %s: field %s: a row-bound primary key must be an integer or a string, not %s", s.Name, f.Name, f.FieldType)
		}
		m.rowKey, m.rowBound = f, true
	}
	return nil
}

// projection returns the metadata of m, a struct type other than the
// statement's model base, as a projection of base's table: its values are
// bound to base's table (and rows), since that is where they are read from
// and written to (db.Model(&Credential{}).Updates(&Patch{...}),
// db.Model(&Credential{}).Find(&[]Patch{})).
func (p *Plugin) projection(base, m *modelMeta) *modelMeta {
	if base == nil || m == nil || base == m || len(m.fields) == 0 || m.err != nil {
		return m
	}
	key := [2]*modelMeta{base, m}
	if v, ok := p.projections.Load(key); ok {
		return v.(*modelMeta)
	}
	c := *m
	c.table, c.bound, c.rowBound, c.rowKey = base.table, base.bound, base.rowBound, nil
	if base.rowKey != nil {
		if f := m.schema.LookUpField(base.rowKey.DBName); f != nil && profilemeta.IsOwnerKind(f.IndirectFieldType.Kind()) {
			c.rowKey = f
		}
	}
	v, _ := p.projections.LoadOrStore(key, &c)
	return v.(*modelMeta)
}

// rowOf returns the text of row v's primary key for a row-bound model, ""
// when the model is not row-bound or the key is zero.
func (m *modelMeta) rowOf(v reflect.Value) string {
	if m.rowKey == nil {
		return ""
	}
	fv, ok := fieldValue(m.rowKey, v)
	if !ok {
		return ""
	}
	return keystore.OwnerText(normOwner(fv))
}

// context returns what a value of field ef, owned by the owner whose text
// is owner, in the row whose key text is row, is bound to.
func (m *modelMeta) context(ef *encField, owner, row string) bound.Context {
	return bound.Context{Table: m.table, Column: ef.f.DBName, Owner: owner, Row: row}
}

// errRowUnknown is the write refused for a row-bound value whose row is
// not known yet.
func (m *modelMeta) errRowUnknown(ef *encField) error {
	return &FieldError{Model: m.name, Field: ef.f.Name, Err: fmt.Errorf(
		"%w: the values of table %s are bound to their row (envelope:\"row\"): set the primary key before writing %s, and update one row at a time by its primary key",
		ErrUnsafe, m.table, ef.f.Name)}
}

// errRowUnread is the read failure of a row-bound value whose row's key
// was not selected.
var errRowUnread = fmt.Errorf("%w: the value is bound to its row, and the row's primary key was not read", ErrDecrypt)

// sealOne seals plain as the stored text of field ef of m: a bound value
// when the model writes bound values, else a Fernet token. row is the
// row's key text for a row-bound model.
func (m *modelMeta) sealOne(k *ownerKey, ef *encField, owner any, row string, plain []byte) (string, error) {
	if !m.bound {
		tok, err := k.C.Encrypt(plain)
		if err != nil {
			return "", fmt.Errorf("envelope: encrypt: %w", err)
		}
		return bytesString(tok), nil
	}
	if m.rowBound && row == "" {
		return "", m.errRowUnknown(ef)
	}
	ctx := m.context(ef, keystore.OwnerText(owner), row)
	out, err := k.Bound().SealText(nil, plain, &ctx)
	if err != nil {
		return "", fmt.Errorf("envelope: encrypt: %w", err)
	}
	return bytesString(out), nil
}

// opens reports whether stored, a value of field ef owned by the owner
// whose text is owner, already is a value of either format that opens
// under k where it is: such a value is stored again unchanged.
func (m *modelMeta) opens(k *ownerKey, ef *encField, owner, row string, stored string) bool {
	bv := isBoundValue(stored)
	if !bv && !token.LooksLikeString(stored) || bv && owner == "" {
		return false
	}
	plain, err := m.openInto(nil, k, ef, owner, row, stored, bv)
	clear(plain)
	return err == nil
}

// errNotOpened is what a value that is no value of its owner, column and
// row reports.
var errNotOpened = fmt.Errorf("%w: token does not open under the owner's DEK", ErrDecrypt)

// errNotBoundHere is what a bound value reports that does not open under
// its owner's DEK in the table, column (and row) it is read from.
var errNotBoundHere = fmt.Errorf("%w: bound value does not open under the owner's DEK where it is stored", ErrDecrypt)

// openInto opens stored, a value of field ef owned by owner in the row
// whose key text is row, appending its plaintext to dst. bv says whether
// stored has the shape of a bound value (isBoundValue), which the caller
// has looked at already.
func (m *modelMeta) openInto(dst []byte, k *ownerKey, ef *encField, owner, row string, stored string, bv bool) ([]byte, error) {
	if !bv {
		out, err := k.C.AppendDecrypt(dst, stringBytes(stored))
		if err != nil {
			return dst, errNotOpened
		}
		return out, nil
	}
	if m.rowBound && row == "" {
		return dst, errRowUnread
	}
	ctx := m.context(ef, owner, row)
	out, err := k.Bound().OpenText(dst, stringBytes(stored), &ctx)
	if err != nil {
		return dst, errNotBoundHere
	}
	return out, nil
}

// openedLen is the most bytes stored can open to, in either format (bv:
// a bound value).
func openedLen(stored string, bv bool) int {
	if bv {
		return bound.OpenedLen(len(stored))
	}
	return token.DecryptedLen(len(stored))
}

// rowText is the key text of a row whose primary key was scanned as id,
// for a row-bound model ("" otherwise).
func (m *modelMeta) rowText(id any) string {
	if !m.rowBound {
		return ""
	}
	return keystore.OwnerText(normOwnerAny(asOwner(id)))
}

// openRaw opens a value of field ef read by a job (owner and primary key
// as scanned) and returns its plaintext in memory of its own.
func (m *modelMeta) openRaw(k *ownerKey, ef *encField, owner, id any, stored []byte) ([]byte, error) {
	return m.openInto(nil, k, ef, keystore.OwnerText(owner), m.rowText(id), bytesString(stored), bound.IsBound(stored))
}
