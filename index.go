package envelope

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"
	"sync"

	"github.com/gorm-envelope/envelope/internal/blind"
	"github.com/gorm-envelope/envelope/internal/indexkeys"
	"gorm.io/gorm"
	"gorm.io/gorm/schema"
)

// Blind indexes.
//
// A field tagged envelope:"index:Email" holds a keyed hash of the
// encrypted field Email's value (docs/format.md), so that rows can be found
// by that value with [Match]. The plugin writes it in the same statement
// as its source, on every write path, and refuses a statement that would
// write one without the other.
//
// Tag options, separated by ';':
//
//	index:F          the encrypted field (Go name or column) it indexes; required
//	scope:owner      the key is derived from the owner's DEK (the default):
//	                 equal values of two owners do not show, shredding the
//	                 owner makes the index meaningless, and a lookup names
//	                 the owner (MatchOwner)
//	scope:global     one random key per index (table envelope_index_keys),
//	                 for lookups across owners: login by email, uniqueness
//	bits:N           the length kept, 1 to 256 (default 256); see PlanIndex
//	transform:a,b    applied before hashing, in order: lower, trim, nfc, digits
//	name:N           the index's key name (default table.column of the source)
//
// The index field is a string or *string (NULL when the source is NULL).

// DefaultIndexBits is the length of an index whose tag gives no bits: the
// full HMAC-SHA256, which has no false positives and shows which rows hold
// equal values.
const DefaultIndexBits = blind.MaxBits

// blindIdx is one blind index of a model.
type blindIdx struct {
	f      *schema.Field // the index column
	src    *encField     // the encrypted field it indexes
	name   string        // its key name
	bits   int
	tr     blind.Transform
	global bool
	unique bool // a unique key of its own (parsed once: GORM's index parsing is not safe to run concurrently)
}

func (bi *blindIdx) String() string { return bi.f.Name }

// parseIndexes reads the index tags of s into m, after m's encrypted
// fields are known.
func parseIndexes(m *modelMeta, s *schema.Schema) error {
	for _, f := range s.Fields {
		tag := tagValue(f)
		if !strings.HasPrefix(tag, "index:") {
			continue
		}
		bi, err := parseIndex(m, s, f, tag)
		if err != nil {
			return fmt.Errorf("envelope: model %s: field %s: %w", s.Name, f.Name, err)
		}
		m.indexes = append(m.indexes, bi)
		bi.src.idx = append(bi.src.idx, bi)
		m.idxByDB[f.DBName] = bi
	}
	return nil
}

func parseIndex(m *modelMeta, s *schema.Schema, f *schema.Field, tag string) (*blindIdx, error) {
	set := schema.ParseTagSetting(tag, ";")
	bi := &blindIdx{f: f, bits: DefaultIndexBits}
	srcName := set["INDEX"]
	if sf := s.LookUpField(srcName); sf != nil {
		bi.src = m.byDB[sf.DBName]
	}
	if bi.src == nil {
		return nil, fmt.Errorf("envelope:\"index:%s\" names no field tagged serializer:envelope", srcName)
	}
	if f.FieldType != typeString && f.FieldType != typeStringPtr {
		return nil, fmt.Errorf("a blind index field must be a string or *string, not %s", f.FieldType)
	}
	if isEnvelopeField(f) || f.PrimaryKey || f == m.owner {
		return nil, errors.New("a blind index field must be a plain column, not encrypted, the owner or a primary key")
	}
	for k, v := range set {
		switch k {
		case "INDEX":
		case "BITS":
			n, err := strconv.Atoi(v)
			if err == nil {
				err = blind.CheckBits(n)
			}
			if err != nil {
				return nil, fmt.Errorf("bits:%s: the length must be 1 to %d", v, blind.MaxBits)
			}
			bi.bits = n
		case "TRANSFORM":
			t, err := blind.ParseTransform(v)
			if err != nil {
				return nil, err
			}
			bi.tr = t
		case "SCOPE":
			switch strings.ToLower(v) {
			case "owner":
			case "global":
				bi.global = true
			default:
				return nil, fmt.Errorf("scope:%s: the scope is owner or global", v)
			}
		case "NAME":
			bi.name = v
		default:
			return nil, fmt.Errorf("unknown blind index option %q (index, scope, bits, transform, name)", strings.ToLower(k))
		}
	}
	if bi.name == "" && s.Table == "" {
		return nil, errors.New("a blind index of a model without a table name needs the name: option")
	}
	if bi.name == "" {
		bi.name = s.Table + "." + bi.src.f.DBName
	}
	bi.unique = isUnique(s, f)
	if bi.unique && f.FieldType == typeString && m.owner != nil && m.owner.PrimaryKey {
		return nil, errors.New("a unique blind index of a self-owned model must be a *string: it is NULL until the row is sealed after its insert")
	}
	if bi.unique && bi.bits < blind.MaxBits {
		return nil, fmt.Errorf("a unique blind index must keep all %d bits: a truncated one rejects distinct values that share an index value", blind.MaxBits)
	}
	return bi, nil
}

func isUnique(s *schema.Schema, f *schema.Field) bool {
	if f.Unique {
		return true
	}
	for _, idx := range schemaIndexes(s) {
		if idx.Class == "UNIQUE" || idx.Option == "UNIQUE" {
			for _, o := range idx.Fields {
				if o.Field == f {
					return true
				}
			}
		}
	}
	return false
}

// globalKeys is the plugin's side of the global index keys: the table is
// created on first use, and each version's derived key prepared once.
type globalKeys struct {
	mu      sync.Mutex
	ensured bool
	derived sync.Map // "name\x00key" -> *blind.Key
}

// prepareIndexKeys runs before a write's transaction begins: it makes sure
// the model's global index keys exist, created on the root handle, so that
// no key is created inside a transaction that may roll back (and SQLite's
// one writer is not waited for by itself).
func (p *Plugin) prepareIndexKeys(db *gorm.DB) {
	if db.Error != nil || db.Statement.Schema == nil || p.keys == nil || inSQLiteTx(db) {
		return
	}
	m := p.metaOf(db.Statement.Schema)
	for _, bi := range m.indexes {
		if bi.global {
			if _, err := p.liveIndexKeys(db, bi, true); err != nil {
				p.addErr(db, &FieldError{Model: m.name, Field: bi.f.Name, Err: err})
				return
			}
		}
	}
}

// inSQLiteTx reports whether db runs in a transaction on SQLite, whose
// one writer that transaction may be: global index keys are then read and
// created in it, and not cached (the transaction may roll back).
func inSQLiteTx(db *gorm.DB) bool {
	_, tx := db.Statement.ConnPool.(gorm.TxCommitter)
	return tx && db.Dialector.Name() == "sqlite"
}

// indexKey returns the key and version that index values of bi are
// written with: the active global version, or the owner's DEK.
func (p *Plugin) indexKey(db *gorm.DB, bi *blindIdx, k *ownerKey) (*blind.Key, int, error) {
	if !bi.global {
		bk, err := k.IndexKey(bi.name)
		return bk, 1, err
	}
	vs, err := p.liveIndexKeys(db, bi, true)
	if err != nil {
		return nil, 0, err
	}
	return vs[0].key, vs[0].version, nil
}

type liveKey struct {
	version int
	key     *blind.Key
}

// liveIndexKeys returns every live version of a global index, the active
// one first; none (and no error) when it has none and create is false.
func (p *Plugin) liveIndexKeys(db *gorm.DB, bi *blindIdx, create bool) ([]liveKey, error) {
	if p.keys == nil {
		return nil, ErrNoKey
	}
	ctx := db.Statement.Context
	var vs []indexkeys.Version
	var err error
	if inSQLiteTx(db) {
		vs, err = p.ikeys.LiveTx(ctx, db.Session(&gorm.Session{NewDB: true}), bi.name, create)
	} else {
		if create {
			if err := p.ensureIndexTable(ctx); err != nil {
				return nil, err
			}
		}
		vs, err = p.ikeys.Live(ctx, bi.name, create)
	}
	if err != nil {
		if errors.Is(err, indexkeys.ErrNoKey) {
			return nil, ErrNoKey
		}
		return nil, fmt.Errorf("envelope: index %s: %w", bi.name, err)
	}
	if len(vs) == 0 && create {
		return nil, fmt.Errorf("envelope: index %s: no key", bi.name)
	}
	out := make([]liveKey, len(vs))
	for i, v := range vs {
		// By the key itself: a key created in a transaction that rolled
		// back may have a successor with its version number.
		id := bi.name + "\x00" + string(v.Key[:])
		if bk, ok := p.gkeys.derived.Load(id); ok {
			out[i] = liveKey{v.Version, bk.(*blind.Key)}
			continue
		}
		bk, err := blind.NewKey(v.Key[:], bi.name)
		if err != nil {
			return nil, err
		}
		p.gkeys.derived.Store(id, bk)
		out[i] = liveKey{v.Version, bk}
	}
	return out, nil
}

func (p *Plugin) ensureIndexTable(ctx context.Context) error {
	g := &p.gkeys
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.ensured {
		return nil
	}
	if err := p.ikeys.EnsureTable(ctx); err != nil {
		return fmt.Errorf("envelope: create %s: %w", indexkeys.Table, err)
	}
	g.ensured = true
	return nil
}

// indexValue is the stored index value of plain under key version ver.
func (bi *blindIdx) value(k *blind.Key, ver int, plain string) string {
	return k.Value(ver, bi.bits, bi.tr.Apply(plain))
}

// setIndex stores an index value (nil for NULL) in struct field bi.f of
// row v; false if v cannot be set.
func (bi *blindIdx) set(v reflect.Value, val *string) bool {
	fv, ok := fieldValue(bi.f, v)
	if !ok || !fv.CanSet() {
		return false
	}
	switch {
	case bi.f.FieldType == typeStringPtr && val == nil:
		fv.Set(reflect.Zero(typeStringPtr))
	case bi.f.FieldType == typeStringPtr:
		s := *val
		fv.Set(reflect.ValueOf(&s))
	case val == nil:
		fv.SetString("")
	default:
		fv.SetString(*val)
	}
	return true
}

// isSet reports whether row v holds a non-zero value in index field bi.f.
func (bi *blindIdx) isSet(v reflect.Value) bool {
	fv, ok := fieldValue(bi.f, v)
	return ok && !fv.IsZero()
}

// errIndexWrite is the refusal of a statement that writes an index column
// without its source.
func errIndexWrite(m *modelMeta, bi *blindIdx) error {
	return &FieldError{Model: m.name, Field: bi.f.Name, Err: fmt.Errorf("%w: a blind index column is written by the plugin, with its source %s, never directly", ErrUnsafe, bi.src.f.Name)}
}

// IndexPlan is [PlanIndex]'s recommendation: the range of lengths that
// both hide values (at least two other values expected per index value)
// and keep lookups cheap (at most √rows false positives per query), the
// length recommended, and the expected false positives and coincidences
// at that length. Note explains an empty range.
type IndexPlan = blind.Plan

// PlanIndex recommends a blind index length (the tag's bits:N) for a table
// of rows rows holding distinct distinct values, by the rules of
// CipherSweet's planner and AWS's beacon guidance. The envelope command's
// index-plan prints the same.
func PlanIndex(rows, distinct uint64) (IndexPlan, error) { return blind.PlanBits(rows, distinct) }
