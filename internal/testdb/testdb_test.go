package testdb

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync"
	"testing"

	mysqldrv "github.com/go-sql-driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

type item struct {
	ID   uint
	Name string
}

var all = []Dialect{SQLite, Postgres, MySQL}

func TestOpenReopen(t *testing.T) {
	for _, d := range all {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := Open(t, d)
			if err := db.AutoMigrate(&item{}); err != nil {
				t.Fatal(err)
			}
			if err := db.Create(&item{Name: "written by db"}).Error; err != nil {
				t.Fatal(err)
			}

			other := Reopen(t, db)
			a, _ := db.DB()
			b, _ := other.DB()
			if a == b {
				t.Fatal("Reopen returned the same connection pool")
			}
			var got item
			if err := other.First(&got).Error; err != nil {
				t.Fatalf("read through Reopen: %v", err)
			}
			if got.Name != "written by db" {
				t.Errorf("read through Reopen: got %q, want %q", got.Name, "written by db")
			}

			// And the other way round.
			if err := other.Create(&item{Name: "written by other"}).Error; err != nil {
				t.Fatal(err)
			}
			var n int64
			if err := db.Model(&item{}).Count(&n).Error; err != nil || n != 2 {
				t.Errorf("count through db: got %d, %v, want 2", n, err)
			}

			for _, h := range []*gorm.DB{db, other, db.WithContext(context.Background()), db.Session(&gorm.Session{})} {
				if got := DialectOf(h); got != d {
					t.Errorf("DialectOf: got %q, want %q", got, d)
				}
			}
			if err := db.Transaction(func(tx *gorm.DB) error {
				if got := DialectOf(tx); got != d {
					t.Errorf("DialectOf(tx): got %q, want %q", got, d)
				}
				if DSN(t, tx) != DSN(t, db) {
					t.Errorf("DSN(tx) differs from DSN(db)")
				}
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			if DSN(t, db) != DSN(t, other) {
				t.Errorf("DSN: Reopen handle reaches %q, want %q", DSN(t, other), DSN(t, db))
			}
		})
	}
}

func TestIsolation(t *testing.T) {
	for _, d := range all {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			a := Open(t, d)
			b := Open(t, d)
			if DSN(t, a) == DSN(t, b) {
				t.Fatalf("two Opens share DSN %q", DSN(t, a))
			}
			if err := a.AutoMigrate(&item{}); err != nil {
				t.Fatal(err)
			}
			if err := a.Create(&item{Name: "a"}).Error; err != nil {
				t.Fatal(err)
			}
			if b.Migrator().HasTable(&item{}) {
				t.Fatal("second database sees the first one's table")
			}
			if tables := userTables(t, b); len(tables) != 0 {
				t.Errorf("fresh database holds tables %q, want none", tables)
			}
			if err := b.AutoMigrate(&item{}); err != nil {
				t.Fatal(err)
			}
			var n int64
			if err := b.Model(&item{}).Count(&n).Error; err != nil || n != 0 {
				t.Errorf("second database: got %d rows, %v, want 0", n, err)
			}
		})
	}
}

// userTables lists db's tables, leaving out SQLite's own (sqlite_sequence).
func userTables(t *testing.T, db *gorm.DB) []string {
	t.Helper()
	tables, err := db.Migrator().GetTables()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, name := range tables {
		if !strings.HasPrefix(name, "sqlite_") {
			out = append(out, name)
		}
	}
	return out
}

// TestCleanup checks that a test's database is gone once the test has ended.
func TestCleanup(t *testing.T) {
	for _, d := range all {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			var dsn string
			t.Run("use", func(t *testing.T) {
				db := Open(t, d)
				if err := db.AutoMigrate(&item{}); err != nil {
					t.Fatal(err)
				}
				dsn = DSN(t, db)
			})
			if dsn == "" {
				t.Skip("inner test did not open a database")
			}
			switch d {
			case SQLite:
				// A memdb database with no connection left is freed: opening the name
				// again gives an empty database.
				db, err := sql.Open("sqlite3", dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				var n int
				if err := db.QueryRow("SELECT count(*) FROM sqlite_master").Scan(&n); err != nil || n != 0 {
					t.Errorf("sqlite database still holds %d objects (%v)", n, err)
				}
			case Postgres:
				admin, _ := pg.connect(t)
				name := dsn[strings.LastIndex(dsn, "search_path=")+len("search_path="):]
				var n int64
				if err := admin.Raw("SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", name).Scan(&n).Error; err != nil || n != 0 {
					t.Errorf("schema %s still exists (%d, %v)", name, n, err)
				}
			case MySQL:
				admin, _ := my.connect(t)
				cfg, err := mysqldrv.ParseDSN(dsn)
				if err != nil {
					t.Fatal(err)
				}
				var n int64
				if err := admin.Raw("SELECT count(*) FROM information_schema.schemata WHERE schema_name = ?", cfg.DBName).Scan(&n).Error; err != nil || n != 0 {
					t.Errorf("database %s still exists (%d, %v)", cfg.DBName, n, err)
				}
			}
		})
	}
}

func TestForEach(t *testing.T) {
	var mu sync.Mutex
	seen := map[Dialect]bool{}
	t.Run("run", func(t *testing.T) {
		ForEach(t, func(t *testing.T, db *gorm.DB) {
			t.Parallel()
			d := DialectOf(db)
			if !strings.HasSuffix(t.Name(), "/"+string(d)) {
				t.Errorf("subtest %s got a %s database", t.Name(), d)
			}
			if !db.Config.SkipDefaultTransaction {
				t.Error("Options not applied")
			}
			mu.Lock()
			seen[d] = true
			mu.Unlock()
		}, Options{SkipDefaultTransaction: true})
	})
	// A dialect whose server is down is skipped, so only SQLite is certain to have run.
	if !seen[SQLite] {
		t.Errorf("ForEach ran %v, want at least sqlite", seen)
	}
}

func TestOptions(t *testing.T) {
	db := Open(t, SQLite)
	if db.Config.Logger != logger.Discard {
		t.Errorf("default logger: got %T, want logger.Discard", db.Config.Logger)
	}
	if db.Config.SkipDefaultTransaction {
		t.Error("SkipDefaultTransaction set by default")
	}
	l := logger.Default.LogMode(logger.Silent)
	other := Reopen(t, db, Options{Logger: l, SkipDefaultTransaction: true})
	if other.Config.Logger != l || !other.Config.SkipDefaultTransaction {
		t.Error("Reopen did not apply Options")
	}
}

func TestSQLiteForeignKeys(t *testing.T) {
	db := Open(t, SQLite)
	var on int
	if err := db.Raw("PRAGMA foreign_keys").Scan(&on).Error; err != nil || on != 1 {
		t.Errorf("PRAGMA foreign_keys: got %d, %v, want 1", on, err)
	}
}

// TestSQLiteConcurrentHandles checks that writers on several handles wait for each other
// (busy timeout) instead of failing with a lock error.
func TestSQLiteConcurrentHandles(t *testing.T) {
	db := Open(t, SQLite)
	if err := db.AutoMigrate(&item{}); err != nil {
		t.Fatal(err)
	}
	const handles, writers, rows = 3, 4, 25
	var wg sync.WaitGroup
	errs := make(chan error, handles*writers*rows)
	for h := range handles {
		hdb := Reopen(t, db)
		for w := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range rows {
					errs <- hdb.Create(&item{Name: fmt.Sprintf("%d-%d-%d", h, w, i)}).Error
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("concurrent write: %v", err)
		}
	}
	var n int64
	if err := db.Model(&item{}).Count(&n).Error; err != nil || n != handles*writers*rows {
		t.Errorf("count: got %d, %v, want %d", n, err, handles*writers*rows)
	}
}

func TestPgParam(t *testing.T) {
	tests := []struct {
		dsn, key, val string
		replace       bool
		want          string
	}{
		{"host=h dbname=d", "connect_timeout", "3", false, "host=h dbname=d connect_timeout=3"},
		{"host=h connect_timeout=10", "connect_timeout", "3", false, "host=h connect_timeout=10"},
		{"host=h search_path=x", "search_path", "t_1", true, "host=h search_path=x search_path=t_1"},
		{"postgres://u@h/d?sslmode=disable", "connect_timeout", "3", false, "postgres://u@h/d?connect_timeout=3&sslmode=disable"},
		{"postgresql://u@h/d?connect_timeout=9", "connect_timeout", "3", false, "postgresql://u@h/d?connect_timeout=9"},
		{"postgres://u@h/d?search_path=x", "search_path", "t_1", true, "postgres://u@h/d?search_path=t_1"},
	}
	for i, tt := range tests {
		got, err := pgParam(tt.dsn, tt.key, tt.val, tt.replace)
		if err != nil || got != tt.want {
			t.Errorf("#%d: got %q, %v, want %q", i, got, err, tt.want)
		}
	}
}

func TestSanitize(t *testing.T) {
	if got, want := sanitize("TestX/sub test#01"), "TestX_sub_test_01"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := sanitize(strings.Repeat("a", 100)); len(got) != 40 {
		t.Errorf("got length %d, want 40", len(got))
	}
}
