package rotate

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/indexkeys"
	"github.com/gorm-envelope/envelope/internal/profilemeta"
)

// Defaults used when [Options.Profile] is nil and a name is left empty.
const (
	DefaultTable       = "profiles"
	DefaultIDColumn    = "id"
	DefaultDEKColumn   = "encrypted_dek"
	DefaultOwnerColumn = "user_id"
	DefaultBatchSize   = 1000
)

// MaxFailures is how many [Failure] records a [Result] or [StatusResult]
// keeps. Counts are always complete; only the list is capped, so that
// memory stays flat however many DEKs fail.
const MaxFailures = 1000

// Options says where the DEKs are and how to process them.
type Options struct {
	// Keys is the master keyring. Run re-encrypts under its primary key and
	// opens with any of its keys. Required.
	Keys *dek.Keyring

	// Profile is the app's profile model (e.g. &Profile{}), with fields
	// tagged envelope:"owner" and envelope:"dek". When set, Table and the
	// column names below are taken from it and the fields are ignored.
	Profile any

	// Table and column names, used when Profile is nil. Empty names take the
	// defaults: profiles, id, encrypted_dek, user_id. The table's name and
	// the owner column are what an owner-bound DEK is checked against
	// (docs/format.md, "Owner-bound DEKs"): give Table as the plugin names
	// the profile table. OwnerColumn "-" leaves the owner out: then only
	// DEKs in the legacy layout open, and owners are not named in failure
	// reports.
	Table, IDColumn, DEKColumn, OwnerColumn string

	// BindDEKs makes Run seal every DEK still in TOM Toolkit's legacy
	// layout bound to its profile row, whether or not it is under the
	// primary key already, counting them in Result.Upgraded; and Backfill
	// give bound DEKs. DEKs already bound stay bound either way. Leave it
	// off while TOM Toolkit must read the DEKs: it cannot open a bound one.
	BindDEKs bool

	// BatchSize is the number of profiles read and written per transaction.
	// Zero means DefaultBatchSize.
	BatchSize int

	// DryRun makes Run and Backfill do everything except write: Result
	// counts what a real run would have done.
	DryRun bool

	// Progress, if set, is called after each batch with the counts so far.
	// It runs on the calling goroutine and should return quickly.
	Progress func(Progress)

	// beforeWrite, set by tests, runs before each batch's write with the
	// attempt number (1 for the first).
	beforeWrite func(attempt int)
	// perRow, set by tests and benchmarks, makes every dialect use the
	// per-row writer.
	perRow bool
}

// Progress is what [Options.Progress] receives after each batch.
type Progress struct {
	// Scanned is the number of profiles examined so far.
	Scanned int
	// Total is the number of profiles counted when the run started; it is
	// an estimate on a live database (profiles may be added meanwhile).
	Total int
	// The counts so far, as in Result.
	Rotated, AlreadyCurrent, Empty, Shredded, Failed, Skipped, Upgraded int
}

// Failure names a DEK, or a blind-index key, that could not be processed.
// It never holds key material.
type Failure struct {
	ID    string // the profile's primary key (for an index key, its row's)
	Owner string // the profile's owner column, if known
	// Index names a blind-index key by index name and version, e.g.
	// "email v2"; it is empty for a DEK.
	Index  string
	Reason string
}

// String formats the failure for a report: id, owner if known, reason; for
// a blind-index key, its name and version, id, reason.
func (f Failure) String() string {
	switch {
	case f.Index != "":
		return fmt.Sprintf("blind-index key %s (id %s): %s", f.Index, f.ID, f.Reason)
	case f.Owner == "":
		return fmt.Sprintf("id %s: %s", f.ID, f.Reason)
	}
	return fmt.Sprintf("id %s (owner %s): %s", f.ID, f.Owner, f.Reason)
}

// FailedError is the error Run and Verify return when some DEKs or
// blind-index keys could not be opened (or re-encrypted). The others were
// processed. It wraps [dek.ErrDecrypt].
type FailedError struct {
	Op        string // "rotate" or "verify"
	Count     int    // DEKs
	IndexKeys int    // blind-index keys
}

// Error names the operation and the counts, e.g. "rotate: 3 DEKs could not
// be opened" or "verify: 3 DEKs and 1 blind-index key could not be opened".
func (e *FailedError) Error() string {
	return e.Op + ": " + unopened(e.Count, e.IndexKeys) + " could not be opened"
}

// unopened says how many DEKs and blind-index keys, as in "3 DEKs",
// "1 blind-index key" or "3 DEKs and 1 blind-index key"; DEKs are named
// even when zero if there is no index key.
func unopened(deks, indexKeys int) string {
	d := "1 DEK"
	if deks != 1 {
		d = fmt.Sprintf("%d DEKs", deks)
	}
	i := "1 blind-index key"
	if indexKeys != 1 {
		i = fmt.Sprintf("%d blind-index keys", indexKeys)
	}
	switch {
	case indexKeys == 0:
		return d
	case deks == 0:
		return i
	}
	return d + " and " + i
}

// Unwrap returns [dek.ErrDecrypt].
func (e *FailedError) Unwrap() error { return dek.ErrDecrypt }

// Error is what Run, Status, Verify and Backfill return for every failure
// other than DEKs that could not be opened (a [*FailedError]): bad Options,
// a database error, the context ending.
type Error struct {
	// Err is what went wrong, without the package's name: a caller that
	// names the operation itself (the envelope command names its
	// subcommand) prints Err.
	Err error
}

// Error is Err's text after "rotate: ".
func (e *Error) Error() string { return "rotate: " + e.Err.Error() }

// Unwrap returns Err.
func (e *Error) Unwrap() error { return e.Err }

// wrap makes a failure of an exported function an *Error; nil and the
// package's own errors are returned as they are.
func wrap(err error) error {
	switch err.(type) {
	case nil, *Error, *FailedError:
		return err
	}
	return &Error{Err: err}
}

// target is the resolved table and quoted SQL names for one run.
type target struct {
	db        *gorm.DB
	dialect   string
	table     string // quoted
	id        string // quoted
	dek       string // quoted
	owner     string // quoted, or "" when none
	bindTable string // the profile table's name, unquoted, as a bound DEK names it
	version   string // quoted version column of the index-key table, or ""
	batchSize int
	pgx       bool // PostgreSQL through pgx, which binds Go slices as arrays

	beforeWrite func(attempt int)
	forcePerRow bool
}

func (o *Options) resolve(ctx context.Context, db *gorm.DB) (*target, error) {
	if db == nil {
		return nil, errors.New("nil *gorm.DB")
	}
	if o.Keys == nil {
		return nil, fmt.Errorf("Options.Keys is nil: %w", dek.ErrNoKey)
	}
	if o.BatchSize < 0 {
		return nil, fmt.Errorf("negative batch size %d", o.BatchSize)
	}
	db = db.WithContext(ctx)
	table, id, dekCol, owner := o.Table, o.IDColumn, o.DEKColumn, o.OwnerColumn
	if o.Profile != nil {
		p, err := profilemeta.Parse(db, o.Profile)
		if err != nil {
			return nil, err
		}
		table, id, dekCol, owner = p.Table, p.ID.DBName, p.DEK.DBName, p.Owner.DBName
	}
	table = orDefault(table, DefaultTable)
	id = orDefault(id, DefaultIDColumn)
	dekCol = orDefault(dekCol, DefaultDEKColumn)
	owner = orDefault(owner, DefaultOwnerColumn)
	t := &target{
		db:        db,
		dialect:   db.Dialector.Name(),
		table:     quote(db, table),
		id:        quote(db, id),
		dek:       quote(db, dekCol),
		batchSize: o.BatchSize,

		beforeWrite: o.beforeWrite,
		forcePerRow: o.perRow,
	}
	if owner != "-" {
		t.owner = quote(db, owner)
	} else if o.BindDEKs {
		return nil, errors.New(`Options.BindDEKs needs the owner column, which a bound DEK names (OwnerColumn is "-")`)
	}
	t.bindTable = table
	if t.dialect == "postgres" {
		if sqlDB, err := db.DB(); err == nil {
			ty := reflect.TypeOf(sqlDB.Driver())
			for ty != nil && ty.Kind() == reflect.Pointer {
				ty = ty.Elem()
			}
			t.pgx = ty != nil && strings.HasPrefix(ty.PkgPath(), "github.com/jackc/pgx/")
		}
	}
	if t.batchSize == 0 {
		t.batchSize = DefaultBatchSize
	}
	return t, nil
}

// indexKeys returns the target of the blind-index key table, with t's
// handle and settings, or nil when the database has no such table.
func (t *target) indexKeys(ctx context.Context) (*target, error) {
	ok, err := indexkeys.Exists(ctx, t.db)
	if err != nil || !ok {
		return nil, err
	}
	ix := *t
	ix.table = quote(t.db, indexkeys.Table)
	ix.id = quote(t.db, "id")
	ix.dek = quote(t.db, "wrapped_key")
	ix.owner = quote(t.db, "name")
	ix.version = quote(t.db, "version")
	return &ix, nil
}

func orDefault(s, def string) string {
	if s = strings.TrimSpace(s); s == "" {
		return def
	}
	return s
}

func quote(db *gorm.DB, name string) string {
	var b strings.Builder
	db.Dialector.QuoteTo(&b, name)
	return b.String()
}

// ph returns the i-th (1-based) bind placeholder of the dialect.
func (t *target) ph(i int) string {
	if t.dialect == "postgres" {
		return fmt.Sprintf("$%d", i)
	}
	return "?"
}
