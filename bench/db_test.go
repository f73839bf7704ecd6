package bench

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net/url"
	"os"
	"regexp"
	"strings"
	"testing"

	"gorm.io/driver/postgres"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// dialects are the databases every benchmark runs on.
var dialects = []string{"sqlite", "postgres"}

const pgEnv = "ENVELOPE_TEST_POSTGRES_DSN"

const pgDefault = "host=127.0.0.1 user=postgres dbname=test sslmode=disable"

func uniqueName(prefix string) string {
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b[:])
}

func gormConfig() *gorm.Config { return &gorm.Config{Logger: logger.Discard} }

// openFresh returns a handle, without any plugin, on a new empty database:
// an in-memory SQLite database, or a PostgreSQL schema of its own dropped
// when b ends. PostgreSQL is skipped when the server cannot be reached.
func openFresh(b testing.TB, dialect string) *gorm.DB {
	b.Helper()
	switch dialect {
	case "sqlite":
		return openSQLite(b)
	case "postgres":
		return openPostgres(b)
	}
	b.Fatalf("unknown dialect %q", dialect)
	return nil
}

func openSQLite(b testing.TB) *gorm.DB {
	b.Helper()
	// memdb: one database shared by every connection of the process that
	// opens the same name, alive while one connection is open.
	dsn := "file:/" + uniqueName("bench_") + "?vfs=memdb&_busy_timeout=5000"
	keeper, err := sql.Open("sqlite3", dsn)
	if err != nil {
		b.Fatal(err)
	}
	conn, err := keeper.Conn(context.Background())
	if err == nil {
		err = conn.PingContext(context.Background())
	}
	if err != nil {
		b.Fatal(err)
	}
	db, err := gorm.Open(sqlite.Open(dsn), gormConfig())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if s, err := db.DB(); err == nil {
			s.Close()
		}
		conn.Close()
		keeper.Close()
	})
	return db
}

func openPostgres(b testing.TB) *gorm.DB {
	b.Helper()
	base := os.Getenv(pgEnv)
	if base == "" {
		base = pgDefault
	}
	base = pgParam(base, "connect_timeout", "3", false)
	admin, err := gorm.Open(postgres.Open(base), gormConfig())
	if err != nil {
		b.Skipf("postgres unreachable at %s: %v", pgEnv, err)
	}
	adminSQL, _ := admin.DB()
	schema := uniqueName("bench_")
	if err := admin.Exec("CREATE SCHEMA " + schema).Error; err != nil {
		adminSQL.Close()
		b.Fatalf("create schema: %v", err)
	}
	db, err := gorm.Open(postgres.Open(pgParam(base, "search_path", schema, true)), gormConfig())
	if err != nil {
		admin.Exec("DROP SCHEMA " + schema + " CASCADE")
		adminSQL.Close()
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if s, err := db.DB(); err == nil {
			s.Close()
		}
		if err := admin.Exec("DROP SCHEMA IF EXISTS " + schema + " CASCADE").Error; err != nil {
			b.Errorf("drop schema %s: %v", schema, err)
		}
		adminSQL.Close()
	})
	return db
}

// pgParam sets a connection parameter in a PostgreSQL DSN in URL or
// keyword/value form; unless replace is set, one already there is kept.
func pgParam(dsn, key, val string, replace bool) string {
	if strings.HasPrefix(dsn, "postgres://") || strings.HasPrefix(dsn, "postgresql://") {
		u, err := url.Parse(dsn)
		if err != nil {
			return dsn
		}
		q := u.Query()
		if replace || !q.Has(key) {
			q.Set(key, val)
		}
		u.RawQuery = q.Encode()
		return u.String()
	}
	if !replace && regexp.MustCompile(`(^|\s)`+regexp.QuoteMeta(key)+`\s*=`).MatchString(dsn) {
		return dsn
	}
	return strings.TrimSpace(dsn) + " " + key + "=" + val
}

// reopen returns a new *gorm.DB, with its own callbacks and plugins, on
// db's connection pool: cheap, and the connections (with their prepared
// statements) stay warm.
func reopen(b testing.TB, db *gorm.DB) *gorm.DB {
	b.Helper()
	pool, err := db.DB()
	if err != nil {
		b.Fatal(err)
	}
	var d gorm.Dialector
	switch db.Dialector.Name() {
	case "sqlite":
		d = sqlite.New(sqlite.Config{Conn: pool})
	case "postgres":
		d = postgres.New(postgres.Config{Conn: pool})
	default:
		b.Fatalf("reopen: dialect %s", db.Dialector.Name())
	}
	n, err := gorm.Open(d, gormConfig())
	if err != nil {
		b.Fatal(err)
	}
	return n
}

// truncate empties table between iterations.
func truncate(b testing.TB, db *gorm.DB, table string) {
	b.Helper()
	q := "DELETE FROM " + table
	if db.Dialector.Name() == "postgres" {
		q = "TRUNCATE TABLE " + table
	}
	if err := db.Exec(q).Error; err != nil {
		b.Fatal(err)
	}
}

func must(b testing.TB, err error) {
	b.Helper()
	if err != nil {
		b.Fatal(err)
	}
}
