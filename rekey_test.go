package envelope_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/bound"
	"github.com/gorm-envelope/envelope/internal/keystore"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/rotate"
	"gorm.io/gorm"
	"gorm.io/gorm/clause"
)

// RkNote has a per-owner blind index of full length, so that MatchOwner
// finds exactly the rows it names.
type RkNote struct {
	ID      uint
	UserID  uint    `envelope:"owner"`
	Body    string  `gorm:"serializer:envelope"`
	BodyIdx *string `gorm:"size:80;index" envelope:"index:Body"`
}

var rekeyModels = []any{&Credential{}, &RkNote{}, &TaxRecord{}, &IxUser{}}

// rekeyWorld is the data of a rekey test: what each owner's rows must read
// back as.
type rekeyWorld struct {
	keys  *dek.Keyring
	creds map[uint]Credential // by ID
	notes map[uint]RkNote
	taxes map[uint]TaxRecord
	users map[uint]IxUser // self-owned: one per owner, whose ID it is
}

func newRekeyWorld(t *testing.T, db *gorm.DB, keys *dek.Keyring, owners ...uint) *rekeyWorld {
	t.Helper()
	must(t, db.AutoMigrate(&RkNote{}, &TaxRecord{}, &IxUser{}))
	w := &rekeyWorld{keys: keys, creds: map[uint]Credential{}, notes: map[uint]RkNote{}, taxes: map[uint]TaxRecord{}, users: map[uint]IxUser{}}
	for _, o := range owners {
		u := IxUser{ID: o, Name: fmt.Sprint("user ", o), Email: fmt.Sprintf("User%d@example.org", o)}
		must(t, db.Create(&u).Error)
		u.EmailIdx = nil
		w.users[o] = u
	}
	for _, o := range owners {
		for i := range 2 {
			w.add(t, db, o, i)
		}
	}
	return w
}

// add creates one row of each model for owner o.
func (w *rekeyWorld) add(t testing.TB, db *gorm.DB, o uint, i int) error {
	key := fmt.Sprintf("key-%d-%d", o, i)
	c := Credential{UserID: o, Facility: "f", Password: fmt.Sprintf("pw-%d-%d", o, i), APIKey: &key, Blob: []byte{byte(o), byte(i)}}
	if err := db.Create(&c).Error; err != nil {
		return err
	}
	n := RkNote{UserID: o, Body: fmt.Sprintf("body-%d-%d", o, i)}
	if err := db.Create(&n).Error; err != nil {
		return err
	}
	tax := fmt.Sprintf("%d-%d", o, i)
	x := TaxRecord{UserID: o, TaxID: &tax, Phone: fmt.Sprintf("555-%d%d", o, i)}
	if err := db.Create(&x).Error; err != nil {
		return err
	}
	c.APIKey, n.BodyIdx, x.TaxIdx, x.PhoneIdx = &key, nil, nil, ""
	w.creds[c.ID], w.notes[n.ID], w.taxes[x.ID] = c, n, x
	return nil
}

// check reads every row through a new handle and compares it, and finds
// every note and tax record by its per-owner index and the global one.
func (w *rekeyWorld) check(t *testing.T, db *gorm.DB, shredded ...uint) {
	t.Helper()
	fresh := testdb.Reopen(t, db)
	must(t, fresh.Use(envelope.New(envelope.Config{Keys: w.keys, Profile: &Profile{}})))
	gone := map[uint]bool{}
	for _, o := range shredded {
		gone[o] = true
	}
	for id, want := range w.creds {
		var got Credential
		err := fresh.First(&got, id).Error
		if gone[want.UserID] {
			if !errors.Is(err, envelope.ErrShredded) {
				t.Errorf("credential %d of shredded owner %d: %v", id, want.UserID, err)
			}
			continue
		}
		if err != nil || got.Password != want.Password || got.APIKey == nil || *got.APIKey != *want.APIKey || !bytes.Equal(got.Blob, want.Blob) {
			t.Errorf("credential %d: %v, got %q, want %q", id, err, got.Password, want.Password)
		}
	}
	for id, want := range w.notes {
		if gone[want.UserID] {
			continue
		}
		var got []RkNote
		err := fresh.Where(envelope.MatchOwner(want.UserID, "Body", want.Body)).Find(&got).Error
		if err != nil || len(got) != 1 || got[0].ID != id || got[0].Body != want.Body {
			t.Errorf("note %d by MatchOwner: %v, %+v", id, err, got)
		}
	}
	for id, want := range w.users {
		var got IxUser
		err := fresh.Where(envelope.Match("Email", want.Email)).First(&got).Error
		if gone[id] {
			if !errors.Is(err, envelope.ErrShredded) && !errors.Is(err, gorm.ErrRecordNotFound) {
				t.Errorf("user %d of a shredded owner: %v", id, err)
			}
			continue
		}
		if err != nil || got.ID != id || got.Email != want.Email {
			t.Errorf("user %d by Match: %v, %+v", id, err, got)
		}
	}
	for id, want := range w.taxes {
		if gone[want.UserID] {
			continue
		}
		var got []TaxRecord
		err := fresh.Where(envelope.MatchOwner(want.UserID, "TaxID", *want.TaxID)).Find(&got).Error
		if err != nil || len(got) != 1 || got[0].ID != id || got[0].Phone != want.Phone {
			t.Errorf("tax record %d by MatchOwner: %v, %+v", id, err, got)
		}
		got = nil
		err = fresh.Where(envelope.Match("Phone", want.Phone)).Find(&got).Error
		if err != nil || len(got) != 1 || got[0].ID != id {
			t.Errorf("tax record %d by its global index: %v, %+v", id, err, got)
		}
	}
}

// rekeyedDEK opens owner o's DEK as the profile table holds it now.
func rekeyedDEK(t testing.TB, db *gorm.DB, keys *dek.Keyring, o uint) (dek.DEK, []byte) {
	t.Helper()
	var p Profile
	must(t, db.Where("user_id = ?", o).First(&p).Error)
	d, _, _, err := keys.OpenBound(context.Background(), p.EncryptedDEK, profileRow(o))
	if err != nil {
		t.Fatalf("owner %d: open stored DEK: %v", o, err)
	}
	return d, p.EncryptedDEK
}

// opensAny reports whether DEK d opens any of owner o's stored values.
func opensAny(t testing.TB, db *gorm.DB, d dek.DEK, o uint) bool {
	t.Helper()
	k := keystore.NewKey(d)
	type raw struct {
		ID                     uint
		Password, APIKey, Blob string
	}
	var rows []raw
	cols := []clause.Column{{Name: "id"}, {Name: "password"}, {Name: "api_key"}, {Name: "blob"}}
	must(t, db.Table("credentials").Clauses(clause.Select{Columns: cols}).Where("user_id = ?", o).Scan(&rows).Error)
	if len(rows) == 0 {
		t.Fatalf("owner %d has no credentials", o)
	}
	owner := fmt.Sprint(o)
	for _, r := range rows {
		for col, v := range map[string]string{"password": r.Password, "api_key": r.APIKey, "blob": r.Blob} {
			if _, err := k.C.Decrypt([]byte(v)); err == nil {
				return true
			}
			if _, err := k.Bound().OpenText(nil, []byte(v), &bound.Context{Table: "credentials", Column: col, Owner: owner}); err == nil {
				return true
			}
		}
	}
	return false
}

func retiredRows(t testing.TB, db *gorm.DB) int {
	t.Helper()
	var n int64
	must(t, db.Raw("SELECT count(*) FROM "+keystore.RetiredTable).Scan(&n).Error)
	return int(n)
}

func TestRekey(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		w := newRekeyWorld(t, db, keys, 1, 2, 3)
		old1, _ := rekeyedDEK(t, db, keys, 1)
		old2, _ := rekeyedDEK(t, db, keys, 2)

		if _, err := envelope.Rekey(context.Background(), db, uint(1), []any{&Credential{}}, envelope.RekeyOptions{Settle: -1}); err == nil {
			t.Fatal("Rekey without all the models the plugin knows: no error")
		}
		err := db.Transaction(func(tx *gorm.DB) error {
			_, err := envelope.Rekey(context.Background(), tx, uint(1), rekeyModels, envelope.RekeyOptions{Settle: -1})
			return err
		})
		if err == nil {
			t.Fatal("Rekey in a transaction: no error")
		}
		dry, err := envelope.Rekey(context.Background(), db, uint(1), rekeyModels, envelope.RekeyOptions{DryRun: true})
		must(t, err)
		if dry.Owners != 1 || dry.Values != 2*(3+1+2)+1 {
			t.Fatalf("dry run: %+v", dry)
		}
		if d, _ := rekeyedDEK(t, db, keys, 1); d != old1 {
			t.Fatal("a dry run changed the DEK")
		}

		res, err := envelope.Rekey(context.Background(), db, uint(1), rekeyModels, envelope.RekeyOptions{Settle: -1})
		must(t, err)
		// 2 credentials of 3 values, 2 notes, 2 tax records of 2 values,
		// and the owner's own user row.
		want := envelope.RekeyResult{Phase: 2, Owners: 1, Values: 13, Indexes: 4, Retired: 1}
		if res != want {
			t.Fatalf("result %+v, want %+v", res, want)
		}
		if d, _ := rekeyedDEK(t, db, keys, 1); d == old1 {
			t.Fatal("owner 1 kept its DEK")
		}
		if d, _ := rekeyedDEK(t, db, keys, 2); d != old2 {
			t.Fatal("owner 2's DEK changed")
		}
		if opensAny(t, db, old1, 1) {
			t.Fatal("the old DEK still opens a value of owner 1")
		}
		if retiredRows(t, db) != 0 {
			t.Fatal("retired DEKs left after Rekey")
		}
		w.check(t, db)
		var c Credential // this process reads under the new DEK at once
		must(t, db.Where("user_id = 1").First(&c).Error)
	})
}

// TestRekeyStragglers stops a Rekey after its first phase, writes under
// the old DEK from a process that still caches it, and has RekeyAll
// finish: the writes are sealed under the new DEK, and rotate.Run and
// Shred treat the retired DEK as they must.
func TestRekeyStragglers(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		keys := newKeys(t)
		setup(t, db, keys)
		w := newRekeyWorld(t, db, keys, 1, 2, 3)
		stale := testdb.Reopen(t, db)
		must(t, stale.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Format: testFormat(), CacheTTL: time.Hour})))
		var warm []Credential
		must(t, stale.Find(&warm).Error)
		old1, _ := rekeyedDEK(t, db, keys, 1)

		stop := errors.New("stopped")
		restore := envelope.SetRekeyFaultForTest(func(step string) error {
			if step == "settle" {
				return stop
			}
			return nil
		})
		_, err := envelope.Rekey(ctx, db, uint(1), rekeyModels, envelope.RekeyOptions{Settle: -1})
		restore()
		if !errors.Is(err, stop) {
			t.Fatalf("Rekey: %v", err)
		}
		if retiredRows(t, db) != 1 {
			t.Fatal("no retired DEK after phase one")
		}
		if _, err := rotate.Run(ctx, db, rotate.Options{Keys: keys, Profile: &Profile{}}); !errors.Is(err, rotate.ErrRekeyPending) {
			t.Fatalf("rotate.Run during a rekey: %v, want ErrRekeyPending", err)
		}
		// The stale process writes under the old DEK: a new row, and an
		// update of a rewritten one.
		must(t, w.add(t, stale, 1, 7))
		// (Not read first: the stale process reads values under the new
		// DEK as ErrDecrypt until its cache lets the old one go.)
		var n RkNote
		for id, x := range w.notes {
			if x.UserID == 1 && (n.ID == 0 || id < n.ID) {
				n = x
			}
		}
		n.Body = "changed under the old DEK"
		must(t, stale.Save(&n).Error)
		n.BodyIdx = nil
		w.notes[n.ID] = n
		if !opensAny(t, db, old1, 1) {
			t.Fatal("the stale process did not write under the old DEK: the test tests nothing")
		}
		var c Credential // documented: a straggler reads as ErrDecrypt here until phase two
		if err := db.Where("user_id = 1 AND facility = 'f'").Order("id desc").First(&c).Error; !errors.Is(err, envelope.ErrDecrypt) {
			t.Fatalf("straggler before phase two: %v", err)
		}

		res, err := envelope.RekeyAll(ctx, db, rekeyModels, envelope.RekeyOptions{Settle: -1})
		must(t, err)
		// Owner 1's stopped Rekey is older than the run: owner 1 is rekeyed
		// again, and its stragglers sealed at once.
		if res.Owners != 3 || res.Skipped != 0 || res.Unreadable != 0 || res.Retired != 4 {
			t.Fatalf("RekeyAll after a stopped Rekey: %+v", res)
		}
		if opensAny(t, db, old1, 1) {
			t.Fatal("the old DEK still opens a value of owner 1")
		}
		if retiredRows(t, db) != 0 {
			t.Fatal("retired DEKs or marks left")
		}
		w.check(t, db)
		if _, err := rotate.Run(ctx, db, rotate.Options{Keys: keys, Profile: &Profile{}}); err != nil {
			t.Fatalf("rotate.Run after the rekey: %v", err)
		}

		// Shred deletes the retired DEKs of a rekey under way.
		restore = envelope.SetRekeyFaultForTest(func(step string) error {
			if step == "settle" {
				return stop
			}
			return nil
		})
		_, err = envelope.Rekey(ctx, db, uint(2), rekeyModels, envelope.RekeyOptions{Settle: -1})
		restore()
		if !errors.Is(err, stop) || retiredRows(t, db) != 1 {
			t.Fatalf("Rekey: %v, %d retired rows", err, retiredRows(t, db))
		}
		must(t, envelope.Shred(db, uint(2)))
		if retiredRows(t, db) != 0 {
			t.Fatal("Shred left the owner's retired DEK")
		}
		w.check(t, db, 2)
	})
}

// TestRekeyAllConcurrentWriter writes rows for every owner from another
// process all through a RekeyAll, with a cache that outlives the first
// phase: every row written must read back afterwards.
func TestRekeyAllConcurrentWriter(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		w := newRekeyWorld(t, db, keys, 1, 2, 3)
		const ttl = 800 * time.Millisecond
		other := testdb.Reopen(t, db)
		must(t, other.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Format: testFormat(), CacheTTL: ttl})))
		var warm []Credential
		must(t, other.Find(&warm).Error)

		var mu sync.Mutex
		written := &rekeyWorld{keys: keys, creds: map[uint]Credential{}, notes: map[uint]RkNote{}, taxes: map[uint]TaxRecord{}}
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 10; ; i++ {
				select {
				case <-done:
					return
				default:
				}
				mu.Lock()
				_ = written.add(t, other, uint(1+i%3), i) // SQLite may be busy: only rows written count
				mu.Unlock()
				time.Sleep(2 * time.Millisecond)
			}
		}()
		res, err := envelope.RekeyAll(context.Background(), db, rekeyModels, envelope.RekeyOptions{Settle: ttl + 200*time.Millisecond, BatchSize: 2})
		close(done)
		wg.Wait()
		must(t, err)
		if res.Owners != 3 || res.Retired != 3 {
			t.Fatalf("result %+v", res)
		}
		if res.Stragglers == 0 {
			t.Errorf("no stragglers caught (%d rows written meanwhile): the test tests nothing", len(written.creds))
		}
		written.check(t, db)
		w.check(t, db)
	})
}

// TestRekeyAllFaults stops RekeyAll at a random step, then runs it again
// to the end, several times over: every value must read back, under a DEK
// that no owner had before.
func TestRekeyAllFaults(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		keys := newKeys(t)
		setup(t, db, keys)
		w := newRekeyWorld(t, db, keys, 1, 2, 3, 4, 5)
		must(t, envelope.Shred(db, uint(5)))
		opts := envelope.RekeyOptions{Settle: -1, BatchSize: 2}

		steps := 0
		restore := envelope.SetRekeyFaultForTest(func(string) error { steps++; return nil })
		res, err := envelope.RekeyAll(ctx, db, rekeyModels, opts)
		restore()
		must(t, err)
		if res.Owners != 4 || res.Shredded != 1 || steps < 20 {
			t.Fatalf("result %+v, %d steps", res, steps)
		}
		// Every step on SQLite, a random few on the servers.
		ks := rand.Perm(steps)[:min(steps, 8)]
		if testdb.DialectOf(db) == testdb.SQLite || os.Getenv("REKEY_FAULTS_ALL") != "" {
			ks = rand.Perm(steps)
		}
		faults := map[string]int{}
		for trial, k := range ks {
			k++
			before := map[uint]dek.DEK{}
			for o := uint(1); o <= 4; o++ {
				before[o], _ = rekeyedDEK(t, db, keys, o)
			}
			n := 0
			stop := errors.New("killed")
			restore := envelope.SetRekeyFaultForTest(func(step string) error {
				if n++; n == k {
					faults[step]++
					return stop
				}
				return nil
			})
			killed, err := envelope.RekeyAll(ctx, db, rekeyModels, opts)
			restore()
			if !errors.Is(err, stop) {
				t.Fatalf("trial %d: killed at step %d: %v", trial, k, err)
			}
			again, err := envelope.RekeyAll(ctx, db, rekeyModels, opts)
			if err != nil {
				t.Fatalf("trial %d: the run again: %v", trial, err)
			}
			// No owner is rekeyed twice: the run again skips those done.
			if killed.Owners+again.Owners != 4 || killed.Owners != again.Skipped {
				t.Errorf("trial %d (step %d): rekeyed %d owners, then %d (%d skipped)", trial, k, killed.Owners, again.Owners, again.Skipped)
			}
			for o := uint(1); o <= 4; o++ {
				if d, _ := rekeyedDEK(t, db, keys, o); d == before[o] {
					t.Errorf("trial %d (step %d): owner %d kept its DEK", trial, k, o)
				}
				if opensAny(t, db, before[o], o) {
					t.Errorf("trial %d (step %d): owner %d's old DEK opens a stored value", trial, k, o)
				}
			}
			if n := retiredRows(t, db); n != 0 {
				t.Errorf("trial %d: %d rows left in %s", trial, n, keystore.RetiredTable)
			}
			w.check(t, db, 5)
		}
		t.Logf("killed at %v", faults)
	})
}
