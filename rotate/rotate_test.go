package rotate

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/fernet/fernet-go"
	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

func TestRunRoundTrip(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		oldKey, newK := newKey(t), newKey(t)
		w := newWorld(t, db)
		w.seed(t, keyring(t, oldKey), 1, 300)
		// One profile without a DEK, one shredded.
		if err := db.Create(&Profile{UserID: 1000}).Error; err != nil {
			t.Fatal(err)
		}
		if err := db.Create(&Profile{UserID: 1001, EncryptedDEK: dek.Tombstone()}).Error; err != nil {
			t.Fatal(err)
		}
		notesBefore := w.notes(t)

		var calls []Progress
		opts := Options{
			Keys:      keyring(t, newK, oldKey),
			Profile:   &Profile{},
			BatchSize: 64,
			Progress:  func(p Progress) { calls = append(calls, p) },
		}
		res, err := Run(ctx, db, opts)
		if err != nil {
			t.Fatal(err)
		}
		want := Result{Rotated: 300, Empty: 1, Shredded: 1}
		if !sameCounts(res, want) {
			t.Fatalf("got %+v, want %+v", res, want)
		}
		if len(calls) != 5 || calls[len(calls)-1].Scanned != 302 || calls[0].Total != 302 || calls[len(calls)-1].Rotated != 300 {
			t.Errorf("progress calls: %+v", calls)
		}

		// The new key alone opens every DEK, to the same DEK.
		w.check(t, keyring(t, newK), 0)
		if got := w.dekColumn(t, 1001); !dek.IsTombstone(got) {
			t.Errorf("shredded DEK rewritten: %q", got)
		}
		if got := w.dekColumn(t, 1000); len(got) != 0 {
			t.Errorf("empty DEK filled: %q", got)
		}

		// The data is byte-identical and still opens with the DEKs.
		notesAfter := w.notes(t)
		if len(notesAfter) != len(notesBefore) {
			t.Fatalf("notes: %d before, %d after", len(notesBefore), len(notesAfter))
		}
		var ns []Note
		db.Find(&ns)
		for _, n := range ns {
			if !bytes.Equal(notesBefore[n.ID], notesAfter[n.ID]) {
				t.Fatalf("note %d ciphertext changed", n.ID)
			}
			d, _, err := opts.Keys.Open(ctx, w.dekColumn(t, n.UserID))
			if err != nil {
				t.Fatal(err)
			}
			k := fernet.Key(d)
			if msg := fernet.VerifyAndDecrypt(n.Body, 0, []*fernet.Key{&k}); msg == nil {
				t.Fatalf("note %d does not open with its owner's DEK", n.ID)
			}
		}

		// A second run has nothing to do.
		res, err = Run(ctx, db, opts)
		if err != nil {
			t.Fatal(err)
		}
		want = Result{AlreadyCurrent: 300, Empty: 1, Shredded: 1}
		if !sameCounts(res, want) {
			t.Fatalf("second run: got %+v, want %+v", res, want)
		}
	})
}

func sameCounts(a, b Result) bool {
	a.Failures, b.Failures = nil, nil
	return a.Rotated == b.Rotated && a.AlreadyCurrent == b.AlreadyCurrent && a.Empty == b.Empty &&
		a.Shredded == b.Shredded && a.Failed == b.Failed && a.Skipped == b.Skipped && a.Upgraded == b.Upgraded
}

func TestRunPartialFailure(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		oldKey, newK, lost := newKey(t), newKey(t), newKey(t)
		w := newWorld(t, db)
		w.seed(t, keyring(t, oldKey), 1, 40)
		w.seed(t, keyring(t, lost), 100, 3) // under a key nobody has
		w.setDEK(t, 7, []byte("not a token"))

		res, err := Run(ctx, db, Options{Keys: keyring(t, newK, oldKey), Profile: &Profile{}, BatchSize: 16})
		var fe *FailedError
		if !errors.As(err, &fe) || fe.Count != 4 || !errors.Is(err, dek.ErrDecrypt) {
			t.Fatalf("err = %v, want a FailedError for 4 DEKs", err)
		}
		if err.Error() != "rotate: 4 DEKs could not be opened" {
			t.Errorf("message %q", err)
		}
		if res.Rotated != 39 || res.Failed != 4 || len(res.Failures) != 4 {
			t.Fatalf("got %+v", res)
		}
		owners := map[string]bool{}
		for _, f := range res.Failures {
			owners[f.Owner] = true
			if f.ID == "" || f.Reason == "" {
				t.Errorf("failure without id or reason: %+v", f)
			}
			for _, k := range []string{oldKey, newK, lost} {
				if bytes.Contains([]byte(f.String()), []byte(k)) {
					t.Fatal("failure report contains a key")
				}
			}
		}
		for _, o := range []string{"7", "100", "101", "102"} {
			if !owners[o] {
				t.Errorf("owner %s not reported; failures: %+v", o, res.Failures)
			}
		}
		w.check(t, keyring(t, newK), 0, 7, 100, 101, 102)
		// The failed DEKs are untouched.
		w.check(t, keyring(t, lost), 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
			21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40)
	})
}

func TestRunResumes(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		oldKey, newK := newKey(t), newKey(t)
		w := newWorld(t, db)
		w.seed(t, keyring(t, oldKey), 1, 100)
		keys := keyring(t, newK, oldKey)

		// Stop after two batches, as a cancelled (or killed) run would.
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		batches := 0
		res, err := Run(ctx, db, Options{Keys: keys, Profile: &Profile{}, BatchSize: 20, Progress: func(Progress) {
			if batches++; batches == 2 {
				cancel()
			}
		}})
		if (err != nil && !errors.Is(err, context.Canceled)) || res.Rotated < 40 {
			t.Fatalf("interrupted run: %+v, %v", res, err)
		}
		st, err := Verify(context.Background(), db, Options{Keys: keys, Profile: &Profile{}})
		if err != nil {
			t.Fatal(err)
		}
		// Batches written concurrently may commit as the run is cancelled:
		// count from the table, not from the result.
		done := st.Keys[0].Count
		if done < 40 || done+st.Keys[1].Count != 100 {
			t.Fatalf("status after interruption: %+v", st)
		}
		w.check(t, keys, -1)

		// A batch whose commit was already on its way when the context ended
		// may still land on the server after Run returned (PostgreSQL), so
		// the rerun may find a few more done than the count above.
		res, err = Run(context.Background(), db, Options{Keys: keys, Profile: &Profile{}, BatchSize: 20})
		if err != nil || res.Rotated+res.AlreadyCurrent != 100 || res.Rotated > 100-done || res.AlreadyCurrent < done {
			t.Fatalf("rerun: %+v, %v (after %d done)", res, err, done)
		}
		w.check(t, keyring(t, newK), 0)
	})
}

func TestRunDryRun(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		oldKey, newK := newKey(t), newKey(t)
		w := newWorld(t, db)
		w.seed(t, keyring(t, oldKey), 1, 10)
		before := w.dekColumn(t, 3)
		res, err := Run(context.Background(), db, Options{Keys: keyring(t, newK, oldKey), Profile: &Profile{}, DryRun: true})
		if err != nil || res.Rotated != 10 {
			t.Fatalf("%+v, %v", res, err)
		}
		if !bytes.Equal(before, w.dekColumn(t, 3)) {
			t.Fatal("dry run wrote")
		}
		w.check(t, keyring(t, oldKey), 0)
	})
}

// A row changed by someone else between read and write is never
// overwritten: the swap fails, the row is read again and handled as it now is.
func TestRunConcurrentChange(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		oldKey, newK := newKey(t), newKey(t)
		w := newWorld(t, db)
		w.seed(t, keyring(t, oldKey), 1, 10)
		keys := keyring(t, newK, oldKey)

		// Made concurrently: owner 2 gets a new DEK under the new key (as an
		// app would), owner 3 is shredded, owner 4 is re-sealed under the old key.
		fresh, _ := dek.NewDEK()
		freshSealed, _ := keys.Seal(ctx, fresh)
		resealed, _ := keyring(t, oldKey).Seal(ctx, w.deks[4])
		other := testdb.Reopen(t, db)
		res, err := Run(ctx, db, Options{Keys: keys, Profile: &Profile{}, beforeWrite: func(attempt int) {
			if attempt != 1 {
				return
			}
			for owner, v := range map[uint][]byte{2: freshSealed, 3: dek.Tombstone(), 4: resealed} {
				if err := other.Model(&Profile{}).Where("user_id = ?", owner).Update("encrypted_dek", v).Error; err != nil {
					t.Error(err)
				}
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		want := Result{Rotated: 8, AlreadyCurrent: 1, Shredded: 1}
		if !sameCounts(res, want) {
			t.Fatalf("got %+v, want %+v", res, want)
		}
		if got := w.dekColumn(t, 2); !bytes.Equal(got, freshSealed) {
			t.Error("concurrent new DEK overwritten")
		}
		if got := w.dekColumn(t, 3); !dek.IsTombstone(got) {
			t.Error("concurrent shred overwritten")
		}
		w.deks[2] = fresh
		w.check(t, keyring(t, newK), 0, 3)
	})
}

// A row that keeps changing is skipped after casAttempts, not failed, and
// left as the other writer made it.
func TestRunSkipsRowThatKeepsChanging(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		oldKey, newK := newKey(t), newKey(t)
		w := newWorld(t, db)
		w.seed(t, keyring(t, oldKey), 1, 5)
		old := keyring(t, oldKey)
		other := testdb.Reopen(t, db)
		var last []byte
		res, err := Run(ctx, db, Options{Keys: keyring(t, newK, oldKey), Profile: &Profile{}, beforeWrite: func(int) {
			last, _ = old.Seal(ctx, w.deks[5])
			if err := other.Model(&Profile{}).Where("user_id = ?", 5).Update("encrypted_dek", last).Error; err != nil {
				t.Error(err)
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		if res.Rotated != 4 || res.Skipped != 1 || res.Failed != 0 {
			t.Fatalf("got %+v", res)
		}
		if !bytes.Equal(w.dekColumn(t, 5), last) {
			t.Error("the other writer's value was overwritten")
		}
		w.check(t, keyring(t, newK, oldKey), -1)
	})
}

func TestStatusAndVerify(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		k0, k1, k2, lost := newKey(t), newKey(t), newKey(t), newKey(t)
		w := newWorld(t, db)
		w.seed(t, keyring(t, k0), 1, 5)
		w.seed(t, keyring(t, k1), 10, 3)
		w.seed(t, keyring(t, lost), 20, 2)
		db.Create(&Profile{UserID: 30, EncryptedDEK: []byte{}})
		db.Create(&Profile{UserID: 31})
		db.Create(&Profile{UserID: 32, EncryptedDEK: dek.Tombstone()})
		keys := keyring(t, k0, k1, k2)
		opts := Options{Keys: keys, Profile: &Profile{}, BatchSize: 4}
		st, err := Status(ctx, db, opts)
		if err != nil {
			t.Fatal(err)
		}
		counts := []int{st.Keys[0].Count, st.Keys[1].Count, st.Keys[2].Count}
		if counts[0] != 5 || counts[1] != 3 || counts[2] != 0 || st.Undecryptable != 2 || st.Empty != 2 || st.Shredded != 1 || st.Total != 13 {
			t.Fatalf("status %+v", st)
		}
		for i, k := range st.Keys {
			if k.Index != i || k.ID != dek.KeyID(keys.Keys()[i]) {
				t.Errorf("key %d: %+v", i, k)
			}
		}
		if len(st.Failures) != 2 || st.Failures[0].Owner != "20" {
			t.Errorf("failures %+v", st.Failures)
		}
		_, err = Verify(ctx, db, opts)
		var fe *FailedError
		if !errors.As(err, &fe) || fe.Count != 2 || err.Error() != "verify: 2 DEKs could not be opened" {
			t.Fatalf("verify: %v", err)
		}
		db.Where("user_id >= 20 AND user_id < 30").Delete(&Profile{})
		if _, err := Verify(ctx, db, opts); err != nil {
			t.Fatalf("verify after removing the bad DEKs: %v", err)
		}
	})
}

func TestBackfill(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		k := newKey(t)
		keys := keyring(t, k)
		w := newWorld(t, db)
		w.seed(t, keys, 1, 5)
		for i := uint(100); i < 130; i++ {
			p := Profile{UserID: i}
			if i%2 == 0 {
				p.EncryptedDEK = []byte{}
			}
			db.Create(&p)
		}
		db.Create(&Profile{UserID: 200, EncryptedDEK: dek.Tombstone()})
		before := w.dekColumn(t, 3)
		opts := Options{Keys: keys, Profile: &Profile{}, BatchSize: 7}
		if n, err := Backfill(ctx, db, Options{Keys: keys, Profile: &Profile{}, DryRun: true}); n != 30 || err != nil {
			t.Fatalf("dry run: %d, %v", n, err)
		}
		n, err := Backfill(ctx, db, opts)
		if n != 30 || err != nil {
			t.Fatalf("backfill: %d, %v", n, err)
		}
		if !bytes.Equal(before, w.dekColumn(t, 3)) {
			t.Error("backfill replaced an existing DEK")
		}
		if !dek.IsTombstone(w.dekColumn(t, 200)) {
			t.Error("backfill replaced a shredded DEK")
		}
		st, err := Verify(ctx, db, opts)
		if err != nil || st.Keys[0].Count != 35 || st.Empty != 0 {
			t.Fatalf("after backfill: %+v, %v", st, err)
		}
		if n, err := Backfill(ctx, db, opts); n != 0 || err != nil {
			t.Fatalf("second backfill: %d, %v", n, err)
		}
	})
}

// The table and columns can be named instead of a model, and a primary key
// that is not an integer takes the per-row path.
func TestRunByTableName(t *testing.T) {
	type Account struct {
		Email      string `gorm:"primaryKey"`
		WrappedKey []byte
	}
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		oldKey, newK := newKey(t), newKey(t)
		if err := db.AutoMigrate(&Account{}); err != nil {
			t.Fatal(err)
		}
		old := keyring(t, oldKey)
		deks := map[string]dek.DEK{}
		for _, e := range []string{"a@x", "b@x", "c@x", "d@x", "e@x"} {
			d, _ := dek.NewDEK()
			s, _ := old.Seal(ctx, d)
			deks[e] = d
			db.Create(&Account{Email: e, WrappedKey: s})
		}
		opts := Options{Keys: keyring(t, newK, oldKey), Table: "accounts", IDColumn: "email", DEKColumn: "wrapped_key", OwnerColumn: "-", BatchSize: 2}
		res, err := Run(ctx, db, opts)
		if err != nil || res.Rotated != 5 {
			t.Fatalf("%+v, %v", res, err)
		}
		var as []Account
		db.Find(&as)
		for _, a := range as {
			d, idx, err := keyring(t, newK).Open(ctx, a.WrappedKey)
			if err != nil || idx != 0 || d != deks[a.Email] {
				t.Errorf("%s: %v", a.Email, err)
			}
		}
		if res, err := Run(ctx, db, opts); err != nil || res.AlreadyCurrent != 5 {
			t.Fatalf("second run: %+v, %v", res, err)
		}
	})
}

func TestOptionsErrors(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	ctx := context.Background()
	if _, err := Run(ctx, db, Options{}); !errors.Is(err, dek.ErrNoKey) {
		t.Errorf("no keys: %v", err)
	}
	keys := keyring(t, newKey(t))
	if _, err := Run(ctx, db, Options{Keys: keys, BatchSize: -1}); err == nil {
		t.Error("negative batch size accepted")
	}
	type Bad struct{ ID uint }
	if _, err := Run(ctx, db, Options{Keys: keys, Profile: &Bad{}}); err == nil {
		t.Error("profile model without tags accepted")
	}
	if _, err := Status(ctx, db, Options{Keys: keys}); err == nil {
		t.Error("missing table: no error")
	}
}

// interrupted ties a failure to the context that ended, and leaves a
// success alone even when the context has ended since.
func TestInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := interrupted(ctx, nil); err != nil {
		t.Fatalf("success after cancel: %v", err)
	}
	done := errors.New("sql: transaction has already been committed or rolled back")
	if err := interrupted(ctx, done); !errors.Is(err, context.Canceled) || !errors.Is(err, done) {
		t.Fatalf("failure after cancel: %v", err)
	}
	if err := interrupted(context.Background(), done); err != done {
		t.Fatalf("failure, context alive: %v", err)
	}
}

// Every error but a *FailedError is an *Error: its text starts "rotate: "
// once, whatever failed, and Err is the same without the prefix, for a
// caller that names the operation itself (the envelope command).
func TestErrorPrefix(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	ctx := context.Background()
	keys := keyring(t, newKey(t))
	missing := Options{Keys: keys, Table: "missing", Progress: func(Progress) {}}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	w := newWorld(t, db)
	w.seed(t, keys, 1, 3)
	profiles := Options{Keys: keys, Profile: &Profile{}}
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"run, no keys", second(Run(ctx, db, Options{}))},
		{"run, missing table", second(Run(ctx, db, missing))},
		{"status, missing table", second(Status(ctx, db, missing))},
		{"verify, missing table", second(Verify(ctx, db, missing))},
		{"backfill, missing table", second(Backfill(ctx, db, missing))},
		{"backfill dry run, missing table", second(Backfill(ctx, db, Options{Keys: keys, Table: "missing", DryRun: true}))},
		{"run, context cancelled", second(Run(cancelled, db, profiles))},
		{"status, context cancelled", second(Status(cancelled, db, profiles))},
	} {
		var re *Error
		if !errors.As(tc.err, &re) {
			t.Errorf("%s: %T %v, want a *rotate.Error", tc.name, tc.err, tc.err)
			continue
		}
		msg := tc.err.Error()
		if !strings.HasPrefix(msg, "rotate: ") || strings.Count(msg, "rotate:") != 1 {
			t.Errorf("%s: %q, want one rotate: prefix", tc.name, msg)
		}
		if "rotate: "+re.Err.Error() != msg {
			t.Errorf("%s: Err %q, error %q", tc.name, re.Err, msg)
		}
	}
	if _, err := Run(ctx, db, Options{}); !errors.Is(err, dek.ErrNoKey) {
		t.Errorf("no keys: %v does not wrap dek.ErrNoKey", err)
	}
	if _, err := Run(cancelled, db, profiles); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v does not wrap context.Canceled", err)
	}
	// DEKs that no key opens are a *FailedError, not wrapped.
	_, err := Verify(ctx, db, Options{Keys: keyring(t, newKey(t)), Profile: &Profile{}})
	var re *Error
	if _, ok := err.(*FailedError); !ok || errors.As(err, &re) {
		t.Errorf("verify with another key: %T %v, want a bare *FailedError", err, err)
	}
}

func second[T any](_ T, err error) error { return err }
