package envelope_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// Faults on PostgreSQL: a backend killed (pg_terminate_backend) or a
// context cancelled in the middle of a write. Afterwards no column holds
// plaintext, every stored DEK opens, the plugin's cache serves no DEK that
// was rolled back, and the app goes on writing and reading.
//
// To stop a statement in the middle, BEFORE INSERT OR UPDATE triggers on
// the test schema's tables wait for an advisory lock ("gate") that the test
// holds on another connection; the waiting backend is then found in
// pg_locks. This is deterministic, unlike a sleep.

// faultEnv is one PostgreSQL schema with gated tables.
type faultEnv struct {
	t     *testing.T
	db    *gorm.DB // the app, with the plugin
	p     *envelope.Plugin
	keys  *dek.Keyring
	admin *gorm.DB // plain SQL, another pool
	conn  *sql.Conn
	gates map[string]int64 // table -> advisory lock key
	held  map[string]bool
	// cached is the number of DEKs in the plugin's cache just before the fault.
	cached int
}

// mark records the cache size just before the fault.
func (e *faultEnv) mark() { e.cached = e.p.CacheStats().Entries }

func newFaultEnv(t *testing.T) *faultEnv {
	t.Helper()
	db := testdb.Open(t, testdb.Postgres)
	keys := newKeys(t)
	e := &faultEnv{t: t, db: db, keys: keys, gates: map[string]int64{}, held: map[string]bool{}}
	e.p = setup(t, db, keys)
	e.admin = rawDB(testdb.Reopen(t, db))
	sqlDB, err := e.admin.DB()
	must(t, err)
	e.conn, err = sqlDB.Conn(context.Background())
	must(t, err)
	t.Cleanup(func() {
		for table := range e.held {
			e.release(table)
		}
		e.conn.Close()
	})
	// Profiles: every insert and update waits at the gate. Credentials: rows
	// whose facility is 'gate'.
	for table, cond := range map[string]string{"profiles": "TRUE", "credentials": "NEW.facility = 'gate'"} {
		key := rand.Int64N(1<<31-1) + 1
		e.gates[table] = key
		fn := "fault_gate_" + table
		rawExec(t, e.admin, fmt.Sprintf(`CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF %s THEN
		PERFORM pg_advisory_xact_lock_shared(%d);
	END IF;
	RETURN NEW;
END $$`, fn, cond, key))
		rawExec(t, e.admin, fmt.Sprintf("CREATE TRIGGER fault_gate BEFORE INSERT OR UPDATE ON %s FOR EACH ROW EXECUTE FUNCTION %s()", table, fn))
	}
	return e
}

// hold closes the gate of table: its gated writes wait.
func (e *faultEnv) hold(table string) {
	e.t.Helper()
	if _, err := e.conn.ExecContext(context.Background(), "SELECT pg_advisory_lock($1)", e.gates[table]); err != nil {
		e.t.Fatalf("hold gate %s: %v", table, err)
	}
	e.held[table] = true
}

// release opens the gate of table.
func (e *faultEnv) release(table string) {
	e.t.Helper()
	if _, err := e.conn.ExecContext(context.Background(), "SELECT pg_advisory_unlock($1)", e.gates[table]); err != nil {
		e.t.Errorf("release gate %s: %v", table, err)
	}
	delete(e.held, table)
}

// waiting returns the pid of the backend waiting at table's gate.
func (e *faultEnv) waiting(table string) int {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		var pids []int
		err := e.admin.Raw("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND NOT granted AND classid = 0 AND objid::bigint = ?", e.gates[table]).Scan(&pids).Error
		must(e.t, err)
		if len(pids) == 1 {
			return pids[0]
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("no statement reached the %s gate in 15s", table)
	return 0
}

// kill terminates backend pid and waits until it is gone.
func (e *faultEnv) kill(pid int) {
	e.t.Helper()
	var ok bool
	must(e.t, e.admin.Raw("SELECT pg_terminate_backend(?)", pid).Scan(&ok).Error)
	if !ok {
		e.t.Fatalf("pg_terminate_backend(%d): got false, want true", pid)
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		var n int64
		must(e.t, e.admin.Raw("SELECT count(*) FROM pg_stat_activity WHERE pid = ?", pid).Scan(&n).Error)
		if n == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	e.t.Fatalf("backend %d still alive 15s after pg_terminate_backend", pid)
}

func async(fn func() error) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- fn() }()
	return ch
}

func (e *faultEnv) result(ch <-chan error) error {
	e.t.Helper()
	select {
	case err := <-ch:
		e.t.Logf("the interrupted statement returned: %v", err)
		return err
	case <-time.After(30 * time.Second):
		e.t.Fatal("the interrupted statement did not return in 30s")
		return nil
	}
}

// check runs the checks every fault must pass: wantRows credentials rows
// survive (the ones written before the fault, which must read as written),
// no column holds plaintext, every stored DEK opens, the cache gained no
// entry, and each owner can be written and read again, through this
// plugin and through a fresh one.
func (e *faultEnv) check(owners []uint, survivors map[uint]string) {
	t := e.t
	t.Helper()
	if n := e.p.CacheStats().Entries; n != e.cached {
		t.Errorf("cache: got %d entries after the fault, want %d (none added)", n, e.cached)
	}
	type rawRow struct {
		ID       uint
		UserID   uint
		Password *string
		APIKey   *string
		Blob     *string
	}
	var rows []rawRow
	must(t, e.admin.Table("credentials").Order("id").Find(&rows).Error)
	if len(rows) != len(survivors) {
		t.Errorf("credentials: got %d rows, want %d (the writes were rolled back)", len(rows), len(survivors))
	}
	for i, r := range rows {
		for col, v := range map[string]*string{"password": r.Password, "api_key": r.APIKey, "blob": r.Blob} {
			if v != nil && (!sealedText(*v) || strings.Contains(*v, marker)) {
				t.Errorf("#%d: credentials %d %s: got %q, want a token", i, r.ID, col, *v)
			}
		}
	}
	var profiles []struct {
		UserID       uint
		EncryptedDEK []byte
	}
	must(t, e.admin.Table("profiles").Find(&profiles).Error)
	for i, pr := range profiles {
		if pr.EncryptedDEK == nil || dek.IsTombstone(pr.EncryptedDEK) {
			continue
		}
		if _, _, _, err := e.keys.OpenBound(context.Background(), pr.EncryptedDEK, profileRow(pr.UserID)); err != nil {
			t.Errorf("#%d: DEK of owner %d: got %v, want one that opens", i, pr.UserID, err)
		}
	}

	// The app goes on: the same plugin writes for every owner...
	want := map[uint]string{}
	for id, plain := range survivors {
		want[id] = plain
	}
	for _, o := range owners {
		c := &Credential{UserID: o, Facility: "after", Password: mk(fmt.Sprint("after-fault-", o))}
		if err := e.db.Create(c).Error; err != nil {
			t.Errorf("owner %d: write after the fault: got %v, want nil", o, err)
			continue
		}
		want[c.ID] = c.Password
	}
	// ...and it and a fresh plugin (empty cache) read everything back.
	fresh := testdb.Reopen(t, e.db)
	must(t, fresh.Use(envelope.New(envelope.Config{Keys: e.keys, Profile: &Profile{}})))
	for name, db := range map[string]*gorm.DB{"same plugin": e.db, "fresh plugin": fresh} {
		var got []Credential
		if err := db.Order("id").Find(&got).Error; err != nil {
			t.Errorf("%s: read after the fault: got %v, want nil", name, err)
		}
		if len(got) != len(want) {
			t.Errorf("%s: got %d rows, want %d", name, len(got), len(want))
		}
		for i, c := range got {
			if c.Password != want[c.ID] {
				t.Errorf("#%d %s: row %d: got %q, want %q", i, name, c.ID, c.Password, want[c.ID])
			}
		}
	}
}

func secretRow(owner uint, facility string) *Credential {
	return &Credential{UserID: owner, Facility: facility, Password: mk(fmt.Sprint("fault-", owner)),
		APIKey: ptr(mk(fmt.Sprint("fault-key-", owner))), Blob: []byte(mk(fmt.Sprint("fault-blob-", owner)))}
}

// A backend killed with pg_terminate_backend between two statements of a
// transaction, or while a statement waits in the middle of a write.
func TestFaultTerminatedBackend(t *testing.T) {
	cases := []struct {
		name string
		// run makes the fault and returns the owners it wrote for and the
		// rows written before it (id -> password) that must survive.
		run func(e *faultEnv) ([]uint, map[uint]string)
	}{
		{"between statements of a transaction", func(e *faultEnv) ([]uint, map[uint]string) {
			err := e.db.Transaction(func(tx *gorm.DB) error {
				var pid int
				if err := tx.Raw("SELECT pg_backend_pid()").Scan(&pid).Error; err != nil {
					return err
				}
				for _, o := range []uint{11, 12} {
					if err := tx.Create(secretRow(o, "tx")).Error; err != nil {
						return err
					}
				}
				e.kill(pid)
				return tx.Create(secretRow(13, "tx")).Error
			})
			if err == nil {
				e.t.Fatal("transaction on a killed backend: got nil, want an error")
			}
			e.t.Logf("the transaction returned: %v", err)
			return []uint{11, 12, 13}, nil
		}},
		{"while creating the DEKs", func(e *faultEnv) ([]uint, map[uint]string) {
			e.hold("profiles")
			ch := async(func() error { return e.db.Create([]*Credential{secretRow(21, "x"), secretRow(22, "x")}).Error })
			e.kill(e.waiting("profiles"))
			e.release("profiles")
			if err := e.result(ch); err == nil {
				e.t.Fatal("got nil, want an error")
			}
			return []uint{21, 22}, nil
		}},
		{"while inserting the row, after its DEK was created", func(e *faultEnv) ([]uint, map[uint]string) {
			e.hold("credentials")
			ch := async(func() error { return e.db.Create(secretRow(31, "gate")).Error })
			e.kill(e.waiting("credentials"))
			e.release("credentials")
			if err := e.result(ch); err == nil {
				e.t.Fatal("got nil, want an error")
			}
			return []uint{31}, nil
		}},
		{"inside the caller's transaction", func(e *faultEnv) ([]uint, map[uint]string) {
			e.hold("credentials")
			ch := async(func() error {
				return e.db.Transaction(func(tx *gorm.DB) error {
					if err := tx.Create(secretRow(41, "x")).Error; err != nil {
						return err
					}
					return tx.Create(secretRow(42, "gate")).Error
				})
			})
			e.kill(e.waiting("credentials"))
			e.release("credentials")
			if err := e.result(ch); err == nil {
				e.t.Fatal("got nil, want an error")
			}
			return []uint{41, 42}, nil
		}},
		{"while filling an existing profile's DEK", func(e *faultEnv) ([]uint, map[uint]string) {
			rawExec(e.t, e.admin, "INSERT INTO profiles (user_id, nickname) VALUES (51, '')")
			e.hold("profiles")
			ch := async(func() error { return e.db.Create(secretRow(51, "x")).Error })
			e.kill(e.waiting("profiles"))
			e.release("profiles")
			if err := e.result(ch); err == nil {
				e.t.Fatal("got nil, want an error")
			}
			if enc := rawDEK(e.t, e.admin, 51); enc != nil {
				e.t.Errorf("profile 51: got a DEK of %d bytes, want NULL (the fill was rolled back)", len(enc))
			}
			return []uint{51}, nil
		}},
		{"while updating a stored value", func(e *faultEnv) ([]uint, map[uint]string) {
			c := secretRow(61, "gate")
			must(e.t, e.db.Create(c).Error)
			e.mark() // the row written first cached its owner's DEK
			e.hold("credentials")
			ch := async(func() error { return e.db.Model(c).Update("password", mk("fault-update")).Error })
			e.kill(e.waiting("credentials"))
			e.release("credentials")
			if err := e.result(ch); err == nil {
				e.t.Fatal("got nil, want an error")
			}
			return []uint{61}, map[uint]string{c.ID: mk("fault-61")}
		}},
		{"in the second batch of CreateInBatches", func(e *faultEnv) ([]uint, map[uint]string) {
			rows := batchRows(70, 25, 14)
			e.hold("credentials")
			ch := async(func() error { return e.db.CreateInBatches(&rows, 10).Error })
			e.kill(e.waiting("credentials"))
			e.release("credentials")
			if err := e.result(ch); err == nil {
				e.t.Fatal("got nil, want an error")
			}
			return []uint{71, 72, 73, 74, 75}, nil
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newFaultEnv(t)
			e.mark()
			owners, survivors := tc.run(e)
			e.check(owners, survivors)
		})
	}
}

// batchRows returns n rows for owners base+1..base+5, the one at gate with
// facility 'gate'.
func batchRows(base uint, n, gate int) []Credential {
	rows := make([]Credential, n)
	for i := range rows {
		f := "batch"
		if i == gate {
			f = "gate"
		}
		rows[i] = *secretRow(base+1+uint(i%5), f)
		rows[i].Password = mk(fmt.Sprint("batch-", i))
	}
	return rows
}

type cancelKey struct{}

// hookedCredential is Credential with a hook that cancels the statement's
// context once the row named "cancel" is inserted.
type hookedCredential struct {
	ID       uint
	UserID   uint `envelope:"owner"`
	Facility string
	Password string `gorm:"serializer:envelope"`
}

func (hookedCredential) TableName() string { return "credentials" }

func (h *hookedCredential) AfterCreate(tx *gorm.DB) error {
	if cancel, ok := tx.Statement.Context.Value(cancelKey{}).(context.CancelFunc); ok && h.Facility == "cancel" {
		cancel()
	}
	return nil
}

// A context cancelled in the middle of CreateInBatches (which runs in a
// transaction of its own): while the DEKs are created, while the second
// batch waits, and from a hook once the first batch is in.
func TestFaultCancelledCreateInBatches(t *testing.T) {
	cases := []struct {
		name string
		run  func(e *faultEnv, ctx context.Context, cancel context.CancelFunc) error
	}{
		{"while creating the DEKs", func(e *faultEnv, ctx context.Context, cancel context.CancelFunc) error {
			rows := batchRows(80, 25, -1)
			e.hold("profiles")
			ch := async(func() error { return e.db.WithContext(ctx).CreateInBatches(&rows, 10).Error })
			e.waiting("profiles")
			cancel()
			err := e.result(ch)
			e.release("profiles")
			return err
		}},
		{"while the second batch waits", func(e *faultEnv, ctx context.Context, cancel context.CancelFunc) error {
			rows := batchRows(80, 25, 14)
			e.hold("credentials")
			ch := async(func() error { return e.db.WithContext(ctx).CreateInBatches(&rows, 10).Error })
			e.waiting("credentials")
			cancel()
			err := e.result(ch)
			e.release("credentials")
			return err
		}},
		{"from a hook after the first batch", func(e *faultEnv, ctx context.Context, cancel context.CancelFunc) error {
			rows := make([]hookedCredential, 25)
			for i := range rows {
				rows[i] = hookedCredential{UserID: 81 + uint(i%5), Facility: "batch", Password: mk(fmt.Sprint("hooked-", i))}
			}
			rows[9].Facility = "cancel"
			// Owners 86.. appear only after the first batch: their DEKs are
			// created on the cancelled context.
			for i := 10; i < 25; i++ {
				rows[i].UserID = 86 + uint(i%3)
			}
			return e.db.WithContext(context.WithValue(ctx, cancelKey{}, cancel)).CreateInBatches(&rows, 10).Error
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newFaultEnv(t)
			e.mark()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			err := tc.run(e, ctx, cancel)
			if err == nil {
				t.Fatal("cancelled CreateInBatches: got nil, want an error")
			}
			t.Logf("the cancelled CreateInBatches returned: %v", err)
			e.check([]uint{81, 82, 83, 84, 85, 86, 87, 88}, nil)
		})
	}
}
