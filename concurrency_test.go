package envelope_test

import (
	"database/sql"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	mysqldrv "github.com/go-sql-driver/mysql"
	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/driver/mysql"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Item 7: first writes for the same new owners from many goroutines on two
// instances, each in a transaction of several statements (CreateInBatches
// of 6 rows of 6 new owners, batches of 2, owners in a different order in
// each goroutine), cause no deadlock and no error at all.
func TestConcurrentFirstWritesNoDeadlock(t *testing.T) {
	rounds := 30
	if testing.Short() {
		rounds = 5
	}
	if s := os.Getenv("ENVELOPE_DEADLOCK_ROUNDS"); s != "" {
		rounds, _ = strconv.Atoi(s)
	}
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		a := startInstance(t, db, "a", keys, envelope.Config{})
		b := startInstance(t, db, "b", keys, envelope.Config{})
		const workers = 12
		var mu sync.Mutex
		kinds := map[string]int{}
		var first error
		calls := 0
		for r := range rounds {
			var wg sync.WaitGroup
			for w := range workers {
				h := a.db
				if w%2 == 1 {
					h = b.db
				}
				rng := rand.New(rand.NewPCG(uint64(r), uint64(w)))
				owners := rng.Perm(6)
				wg.Go(func() {
					rows := make([]Credential, 6)
					for i, o := range owners {
						rows[i] = Credential{UserID: uint(1000 + r*6 + o), Facility: fmt.Sprint("w", w), Password: fmt.Sprint("p", r, w, o)}
					}
					err := h.CreateInBatches(&rows, 2).Error
					mu.Lock()
					defer mu.Unlock()
					calls++
					if err != nil {
						kinds[errKind(err)]++
						if first == nil {
							first = err
						}
					}
				})
			}
			wg.Wait()
		}
		if len(kinds) > 0 {
			t.Fatalf("%d calls: errors by kind %v; first: %v", calls, kinds, first)
		}
		// Every row reads back, one DEK per owner.
		var got []Credential
		must(t, db.Find(&got).Error)
		if len(got) != calls*6 {
			t.Fatalf("%d rows, want %d", len(got), calls*6)
		}
		var n int64
		must(t, db.Model(&Profile{}).Count(&n).Error)
		if int(n) != rounds*6 {
			t.Fatalf("%d profiles, want %d", n, rounds*6)
		}
	})
}

func errKind(err error) string {
	s := err.Error()
	switch {
	case strings.Contains(s, "1213") || strings.Contains(s, "40P01") || strings.Contains(strings.ToLower(s), "deadlock"):
		return "deadlock"
	case strings.Contains(s, "40001"):
		return "serialization"
	case strings.Contains(s, "not visible"):
		return "not visible"
	}
	return s
}

// Item 8: on MySQL's REPEATABLE READ, a transaction whose snapshot
// predates another instance's first write for an owner writes that
// owner's row and reads it back. On PostgreSQL's REPEATABLE READ the same
// transaction cannot see the new DEK at all: it fails with ErrConflict,
// to be retried.
func TestSnapshotOlderThanFirstWrite(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		a := startInstance(t, db, "a", keys, envelope.Config{})
		b := startInstance(t, db, "b", keys, envelope.Config{})
		opts := &sql.TxOptions{Isolation: sql.LevelRepeatableRead}
		if testdb.DialectOf(db) == testdb.SQLite {
			opts = nil
		}
		tx := a.db.Begin(opts)
		must(t, tx.Error)
		defer tx.Rollback()
		var before []Credential
		must(t, tx.Find(&before).Error) // the snapshot starts here
		if testdb.DialectOf(db) != testdb.SQLite {
			must(t, b.db.Create(&Credential{UserID: 5, Password: "from-b"}).Error)
		}
		c := &Credential{UserID: 5, Password: "from-a"}
		err := tx.Create(c).Error
		if testdb.DialectOf(db) == testdb.Postgres {
			if !errors.Is(err, envelope.ErrConflict) {
				t.Fatalf("got %v, want ErrConflict", err)
			}
			return
		}
		must(t, err)
		var got Credential
		must(t, tx.First(&got, c.ID).Error)
		if got.Password != "from-a" {
			t.Fatalf("read back %q", got.Password)
		}
		must(t, tx.Commit().Error)
		var all []Credential
		must(t, b.db.Order("id").Find(&all).Error)
		if len(all) == 0 || all[len(all)-1].Password != "from-a" {
			t.Fatalf("after commit: %+v", all)
		}
	})
}

// On MySQL an app user that may not create tables still gets the lock
// once an operator has created envelope_locks: db.Use finds its row and
// logs no warning.
func TestLockTablePrecreated(t *testing.T) {
	db := testdb.Open(t, testdb.MySQL)
	keys := newKeys(t)
	setup(t, db, keys) // creates envelope_locks and its row, as an operator would
	cfg, err := mysqldrv.ParseDSN(testdb.DSN(t, db))
	if err != nil {
		t.Fatal(err)
	}
	user := fmt.Sprintf("envapp%d", rand.Uint32())
	must(t, db.Exec("CREATE USER '"+user+"'@'%' IDENTIFIED BY 'pw'").Error)
	t.Cleanup(func() { db.Exec("DROP USER '" + user + "'@'%'") })
	must(t, db.Exec("GRANT SELECT, INSERT, UPDATE, DELETE ON `"+cfg.DBName+"`.* TO '"+user+"'@'%'").Error)
	cfg.User, cfg.Passwd = user, "pw"
	app, err := gorm.Open(mysql.Open(cfg.FormatDSN()), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s, err := app.DB(); err == nil {
			s.Close()
		}
	})
	logs := &slogCapture{}
	must(t, app.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Logger: slogLogger(logs)})))
	for _, l := range logs.Lines() {
		if strings.Contains(l, "lock table") {
			t.Fatalf("warning with the table in place: %s", l)
		}
	}
	must(t, app.Create(&Credential{UserID: 1, Password: "p"}).Error)
}
