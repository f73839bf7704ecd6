package cli

import (
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"gorm.io/gorm/schema"

	"github.com/gorm-envelope/envelope/internal/blind"
)

// The model reindex works on. The command does not know the app's Go
// models, so its command line describes one: the table, its key and owner
// columns, the encrypted columns and the index columns with their tags.
// From that it makes a struct type at run time which envelope.Reindex
// parses as it would the app's model.

// reindexFlags are reindex's own flags.
type reindexFlags struct {
	table, pk, owner  string
	pkType, ownerType colType
	sources, indexes  listFlag
	rotate            bool
	settle            time.Duration
}

// colType is the Go type of a key column: --pk-type and --owner-type.
type colType struct {
	name string // "int" or "string"
	set  bool   // given on the command line
}

func (c *colType) String() string { return c.name }

func (c *colType) Set(v string) error {
	if v != "int" && v != "string" {
		return errors.New("want int or string")
	}
	c.name, c.set = v, true
	return nil
}

func (c colType) goType() reflect.Type {
	if c.name == "string" {
		return reflect.TypeFor[string]()
	}
	return reflect.TypeFor[int64]()
}

// listFlag is a flag that may be given more than once.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, " ") }

func (l *listFlag) Set(v string) error {
	*l = append(*l, v)
	return nil
}

// modelSpec is the model reindex's command line describes.
type modelSpec struct {
	table, pk, owner  string
	pkType, ownerType reflect.Type
	row               bool     // the primary key is tagged envelope:"row" (reseal)
	sources           []string // encrypted columns
	indexes           []indexSpec
}

// columns returns every column of the model with the flag that names it.
func (s *modelSpec) columns() [][2]string {
	cols := [][2]string{{s.pk, "--pk"}}
	if s.owner != s.pk {
		cols = append(cols, [2]string{s.owner, "--owner"})
	}
	for _, c := range s.sources {
		cols = append(cols, [2]string{c, "--source"})
	}
	for _, ix := range s.indexes {
		cols = append(cols, [2]string{ix.column, "--index"})
	}
	return cols
}

// indexSpec is one --index: the index column and its tag's options, with
// index: resolved to a source column.
type indexSpec struct {
	column, source string
	options        map[string]string // upper-case keys, as schema.ParseTagSetting gives them; not INDEX
}

// indexOptions are the options an index tag may have, as the plugin reads
// them.
const indexOptions = "index, scope, bits, transform, name"

// spec checks reindex's command line and returns the model it describes.
// Every error is a usage error naming the flag at fault.
func (r *reindexFlags) spec(profileTable, profileOwnerCol string) (*modelSpec, error) {
	s := &modelSpec{table: strings.TrimSpace(r.table), pk: strings.TrimSpace(r.pk), owner: strings.TrimSpace(r.owner)}
	switch {
	case s.table == "":
		return nil, usagef("reindex: set --model-table to the table of the model whose blind indexes to fill")
	case s.owner == "":
		return nil, usagef("reindex: set --owner to the model's owner column (its field tagged envelope:\"owner\"; for a self-owned model, its primary key)")
	case len(r.sources) == 0:
		return nil, usagef("reindex: set --source to the encrypted column each index is of")
	case len(r.indexes) == 0:
		return nil, usagef("reindex: set --index COLUMN=TAG for each blind index, with the envelope tag copied from the model")
	case profileOwnerCol == "-":
		return nil, usagef("reindex: --owner-column is -, but reindex reads each owner's DEK by it: name the profile table's owner column")
	case s.table == profileTable:
		return nil, usagef("reindex: --model-table %s is the profile table (--table), which holds no encrypted column", s.table)
	case r.settle < 0:
		return nil, usagef("reindex: --settle %v is negative", r.settle)
	}
	for _, c := range []struct{ flag, name string }{{"--model-table", s.table}, {"--pk", s.pk}, {"--owner", s.owner}} {
		if err := checkColumn(c.flag, c.name); err != nil {
			return nil, err
		}
	}
	s.pkType, s.ownerType = r.pkType.goType(), r.ownerType.goType()
	if s.owner == s.pk {
		// Self-owned: one column, one type, whichever flag gives it.
		if r.pkType.set && r.ownerType.set && r.pkType.name != r.ownerType.name {
			return nil, usagef("reindex: --owner is the primary key %s, so --pk-type %s and --owner-type %s must agree", s.pk, r.pkType.name, r.ownerType.name)
		}
		if r.ownerType.set {
			s.pkType = s.ownerType
		} else {
			s.ownerType = s.pkType
		}
	}
	taken := map[string]string{s.pk: "--pk"}
	if s.owner != s.pk {
		taken[s.owner] = "--owner"
	}
	for _, list := range r.sources {
		for c := range strings.SplitSeq(list, ",") {
			c = strings.TrimSpace(c)
			if err := checkColumn("--source", c); err != nil {
				return nil, err
			}
			if f, ok := taken[c]; ok {
				return nil, usagef("reindex: --source %s is already given as %s", c, f)
			}
			taken[c] = "--source"
			s.sources = append(s.sources, c)
		}
	}
	for _, v := range r.indexes {
		ix, err := parseIndexFlag(v, s.sources)
		if err != nil {
			return nil, err
		}
		if f, ok := taken[ix.column]; ok {
			return nil, usagef("reindex: --index %s: the column is already given as %s", ix.column, f)
		}
		taken[ix.column] = "--index"
		s.indexes = append(s.indexes, ix)
	}
	for _, c := range s.sources {
		if !slices.ContainsFunc(s.indexes, func(ix indexSpec) bool { return ix.source == c }) {
			return nil, usagef("reindex: --source %s: no --index is of it", c)
		}
	}
	if r.rotate && !slices.ContainsFunc(s.indexes, indexSpec.global) {
		return nil, usagef("reindex: --rotate: no --index is global (scope:global), and a per-owner index has no key of its own to rotate")
	}
	return s, nil
}

// checkColumn refuses a name that is empty or would break the struct tag
// it goes into.
func checkColumn(flag, name string) error {
	if name == "" {
		return usagef("reindex: %s: empty name", flag)
	}
	if strings.ContainsAny(name, "\";\\`") || strings.ContainsFunc(name, func(r rune) bool { return r < ' ' }) {
		return usagef("reindex: %s %q: a name cannot hold quotes, ';', '\\' or control characters", flag, name)
	}
	return nil
}

// parseIndexFlag parses one --index COLUMN=TAG. TAG is the envelope tag's
// value, or the model's whole struct tag, which holds it.
func parseIndexFlag(v string, sources []string) (indexSpec, error) {
	col, tag, ok := strings.Cut(v, "=")
	col = strings.TrimSpace(col)
	if !ok || col == "" {
		return indexSpec{}, usagef("reindex: --index %q: want COLUMN=TAG, the index column and its envelope tag (e.g. email_idx=index:email;scope:global)", v)
	}
	if err := checkColumn("--index", col); err != nil {
		return indexSpec{}, err
	}
	if strings.Contains(tag, `envelope:"`) {
		if t, ok := reflect.StructTag(tag).Lookup("envelope"); ok {
			tag = t
		}
	}
	bad := func(format string, args ...any) error {
		return usagef("reindex: --index %s: "+format, append([]any{col}, args...)...)
	}
	opts := schema.ParseTagSetting(tag, ";")
	ix := indexSpec{column: col, options: map[string]string{}}
	src, ok := opts["INDEX"]
	if !ok || strings.TrimSpace(src) == "" {
		return indexSpec{}, bad("the tag %q has no index: option naming the encrypted column", tag)
	}
	ix.source = sourceColumn(strings.TrimSpace(src), sources)
	if ix.source == "" {
		return indexSpec{}, bad("index:%s is not a --source (%s)", src, strings.Join(sources, ", "))
	}
	for k, val := range opts {
		switch k {
		case "INDEX":
			continue
		case "BITS":
			n, err := strconv.Atoi(val)
			if err == nil {
				err = blind.CheckBits(n)
			}
			if err != nil {
				return indexSpec{}, bad("bits:%s: the length must be 1 to %d", val, blind.MaxBits)
			}
		case "TRANSFORM":
			if _, err := blind.ParseTransform(val); err != nil {
				return indexSpec{}, bad("%s", strings.TrimPrefix(err.Error(), "envelope: "))
			}
		case "SCOPE":
			if s := strings.ToLower(val); s != "owner" && s != "global" {
				return indexSpec{}, bad("scope:%s: the scope is owner or global", val)
			}
		case "NAME":
			if val == "" {
				return indexSpec{}, bad("name: is empty")
			}
		default:
			return indexSpec{}, bad("unknown option %q (%s)", strings.ToLower(k), indexOptions)
		}
		ix.options[k] = val
	}
	return ix, nil
}

// sourceColumn returns the --source that an index tag's index: names: the
// column itself, or the model's Go field name, read as GORM's default
// naming makes it a column (Email, EmailAddress: email, email_address).
// "" if none.
func sourceColumn(name string, sources []string) string {
	if slices.Contains(sources, name) {
		return name
	}
	if c := (schema.NamingStrategy{}).ColumnName("", name); slices.Contains(sources, c) {
		return c
	}
	return ""
}

func (ix indexSpec) global() bool { return strings.EqualFold(ix.options["SCOPE"], "global") }

// tag is the index field's envelope tag in the struct reindex makes: the
// options given, index: naming field, and the key name the plugin gives
// the app's model unless the tag gives one.
func (ix indexSpec) tag(field, table string) string {
	esc := func(v string) string { return strings.ReplaceAll(v, ";", `\;`) }
	parts := []string{"index:" + field}
	for _, k := range slices.Sorted(maps.Keys(ix.options)) {
		parts = append(parts, strings.ToLower(k)+":"+esc(ix.options[k]))
	}
	if _, ok := ix.options["NAME"]; !ok {
		parts = append(parts, "name:"+esc(table+"."+ix.source))
	}
	return strings.Join(parts, ";")
}

// structType is the model as a struct: the primary key (PK), the owner
// (Owner, or PK itself for a self-owned model), each source (S0, S1, ...)
// and each index (I0, I1, ...).
func (s *modelSpec) structType() reflect.Type {
	tag := func(gorm, envelope string) reflect.StructTag {
		t := "gorm:" + strconv.Quote(gorm)
		if envelope != "" {
			t += " envelope:" + strconv.Quote(envelope)
		}
		return reflect.StructTag(t)
	}
	pkOwner := ""
	if s.owner == s.pk {
		pkOwner = "owner"
	} else if s.row {
		pkOwner = "row"
	}
	fields := []reflect.StructField{{Name: "PK", Type: s.pkType, Tag: tag("primaryKey;column:"+s.pk, pkOwner)}}
	if s.owner != s.pk {
		fields = append(fields, reflect.StructField{Name: "Owner", Type: s.ownerType, Tag: tag("column:"+s.owner, "owner")})
	}
	field := map[string]string{}
	for i, c := range s.sources {
		field[c] = fmt.Sprintf("S%d", i)
		fields = append(fields, reflect.StructField{Name: field[c], Type: reflect.TypeFor[string](), Tag: tag("column:"+c+";serializer:envelope", "")})
	}
	for i, ix := range s.indexes {
		fields = append(fields, reflect.StructField{Name: fmt.Sprintf("I%d", i), Type: reflect.TypeFor[*string](), Tag: tag("column:"+ix.column, ix.tag(field[ix.source], s.table))})
	}
	return reflect.StructOf(fields)
}

// The profile model reindex gives the plugin. Its table and columns come
// from the profile flags through profileNamer: the types are static (they
// need a TableName method, which a struct made at run time cannot have),
// and GORM asks the handle's naming strategy for both, so each run's
// values stay with its own *gorm.DB.

// intOwnerProfile is the profile model of integer owners.
type intOwnerProfile struct {
	ID    int64  `gorm:"primaryKey"`
	Owner int64  `gorm:"uniqueIndex" envelope:"owner"`
	DEK   []byte `envelope:"dek"`
}

// TableName is the --table the handle's profileNamer holds.
func (intOwnerProfile) TableName(n schema.Namer) string { return profileTable(n) }

// stringOwnerProfile is the profile model of string owners.
type stringOwnerProfile struct {
	ID    int64  `gorm:"primaryKey"`
	Owner string `gorm:"uniqueIndex" envelope:"owner"`
	DEK   []byte `envelope:"dek"`
}

// TableName is the --table the handle's profileNamer holds.
func (stringOwnerProfile) TableName(n schema.Namer) string { return profileTable(n) }

// profile returns the profile model for the model's owner type.
func (s *modelSpec) profile() any {
	if s.ownerType.Kind() == reflect.String {
		return &stringOwnerProfile{}
	}
	return &intOwnerProfile{}
}

func profileTable(n schema.Namer) string {
	if pn, ok := n.(profileNamer); ok {
		return pn.table
	}
	return n.TableName("profile")
}

// profileNamer is GORM's naming strategy, but for the profile model's
// table and columns, which are the profile flags' values.
type profileNamer struct {
	schema.Namer
	table, id, owner, dek string
}

// ColumnName names the profile model's columns after the flags.
func (n profileNamer) ColumnName(table, field string) string {
	if table == n.table {
		switch field {
		case "ID":
			return n.id
		case "Owner":
			return n.owner
		case "DEK":
			return n.dek
		}
	}
	return n.Namer.ColumnName(table, field)
}
