// Package testdb opens real databases for tests: SQLite in memory, and the PostgreSQL and
// MySQL/MariaDB servers named by the environment. Every call to [Open] gets a fresh, empty,
// isolated database (an in-memory SQLite database, a PostgreSQL schema, or a MySQL database),
// removed when the test ends, so tests can run in parallel and leave nothing behind.
//
// # Servers
//
// PostgreSQL is reached at ENVELOPE_TEST_POSTGRES_DSN (default
// "host=127.0.0.1 user=postgres dbname=test sslmode=disable") and MySQL/MariaDB at
// ENVELOPE_TEST_MYSQL_DSN (default "root@tcp(127.0.0.1:3306)/test?parseTime=true").
// Each server is probed once per process. When it cannot be reached its tests are skipped,
// unless the environment variable CI is non-empty, in which case they fail.
package testdb

import (
	"fmt"
	"os"
	"testing"

	"gorm.io/driver/mysql"
	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Dialect names a database engine.
type Dialect string

// The dialects testdb can open.
const (
	SQLite   Dialect = "sqlite"
	Postgres Dialect = "postgres"
	MySQL    Dialect = "mysql"
)

// Default is the list of dialects [ForEach] runs against.
var Default = []Dialect{SQLite, Postgres, MySQL}

// Options tweak the gorm.Config of a handle. The zero value gives gorm's defaults with a
// silent logger (logger.Discard). When several Options are passed, later non-zero fields win.
type Options struct {
	// Logger replaces the silent default logger.
	Logger logger.Interface
	// SkipDefaultTransaction sets gorm.Config.SkipDefaultTransaction.
	SkipDefaultTransaction bool
}

func (o Options) config() *gorm.Config {
	return &gorm.Config{Logger: o.Logger, SkipDefaultTransaction: o.SkipDefaultTransaction}
}

func merge(opts []Options) Options {
	o := Options{Logger: logger.Discard}
	for _, p := range opts {
		if p.Logger != nil {
			o.Logger = p.Logger
		}
		if p.SkipDefaultTransaction {
			o.SkipDefaultTransaction = true
		}
	}
	return o
}

// Open returns a *gorm.DB on a fresh, empty, isolated database of dialect d. The database
// and the handle are removed and closed when t ends. If d's server cannot be reached, Open
// skips t, or fails it when the environment variable CI is non-empty.
func Open(t testing.TB, d Dialect, opts ...Options) *gorm.DB {
	t.Helper()
	var dsn string
	switch d {
	case SQLite:
		dsn = newSQLite(t)
	case Postgres:
		dsn = newPostgres(t)
	case MySQL:
		dsn = newMySQL(t)
	default:
		t.Fatalf("testdb: unknown dialect %q", d)
	}
	return open(t, d, dsn, opts)
}

// Reopen returns another independent handle, with its own connection pool, on the same
// isolated database as db, for tests that run several application instances. The handle
// is closed when t ends.
func Reopen(t testing.TB, db *gorm.DB, opts ...Options) *gorm.DB {
	t.Helper()
	d, dsn, err := describe(db)
	if err != nil {
		t.Fatalf("testdb: Reopen: %v", err)
	}
	return open(t, d, dsn, opts)
}

// DSN returns a data source name reaching the same isolated database as db, in the form
// the dialect's gorm driver (and so the envelope CLI's --dsn) takes.
//
// An SQLite database lives in the memory of the test process: its DSN reaches it only
// from inside that process (for example a CLI entry point called in-process), not from
// a subprocess.
func DSN(t testing.TB, db *gorm.DB) string {
	t.Helper()
	_, dsn, err := describe(db)
	if err != nil {
		t.Fatalf("testdb: DSN: %v", err)
	}
	return dsn
}

// DialectOf reports the dialect of db, or "" if db was not opened by a driver testdb knows.
func DialectOf(db *gorm.DB) Dialect {
	d, _, _ := describe(db)
	return d
}

// ForEach runs fn in a subtest named after each dialect in [Default], t.Run(string(d), ...),
// each with its own database from [Open]. The databases are isolated, so fn may call
// t.Parallel.
func ForEach(t *testing.T, fn func(t *testing.T, db *gorm.DB), opts ...Options) {
	t.Helper()
	for _, d := range Default {
		t.Run(string(d), func(t *testing.T) {
			fn(t, Open(t, d, opts...))
		})
	}
}

// describe reads the dialect and DSN back from the handle's dialector, which every
// session and transaction derived from the handle shares.
func describe(db *gorm.DB) (Dialect, string, error) {
	if db == nil || db.Config == nil {
		return "", "", fmt.Errorf("nil *gorm.DB")
	}
	switch dl := db.Dialector.(type) {
	case *sqlite.Dialector:
		return SQLite, dl.DSN, nil
	case *postgres.Dialector:
		return Postgres, dl.DSN, nil
	case *mysql.Dialector:
		return MySQL, dl.DSN, nil
	}
	return "", "", fmt.Errorf("unsupported dialector %T", db.Dialector)
}

func dialector(d Dialect, dsn string) gorm.Dialector {
	switch d {
	case SQLite:
		return sqlite.Open(dsn)
	case Postgres:
		return postgres.Open(dsn)
	case MySQL:
		return mysql.Open(dsn)
	}
	panic("testdb: unknown dialect " + string(d))
}

// open opens a handle on dsn and closes it at cleanup. Cleanups run last-in first-out,
// so the handle is closed before the database it points to is dropped.
func open(t testing.TB, d Dialect, dsn string, opts []Options) *gorm.DB {
	t.Helper()
	db, err := gorm.Open(dialector(d, dsn), merge(opts).config())
	if err != nil {
		t.Fatalf("testdb: open %s: %v", d, err)
	}
	sqlDB, err := db.DB()
	if err != nil {
		t.Fatalf("testdb: open %s: %v", d, err)
	}
	t.Cleanup(func() {
		if err := sqlDB.Close(); err != nil {
			t.Errorf("testdb: close %s: %v", d, err)
		}
	})
	return db
}

// unreachable skips t, or fails it under CI, because a server cannot be reached.
func unreachable(t testing.TB, server, env string, err error) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf("%s unreachable (CI is set, so this fails instead of skipping): %v; set %s", server, err, env)
	}
	t.Skipf("%s unreachable: %v; set %s", server, err, env)
}
