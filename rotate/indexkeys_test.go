package rotate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/indexkeys"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// indexRow is a row of the blind-index key table.
type indexRow struct {
	ID         int64
	Name       string
	Version    int
	WrappedKey []byte
}

func (indexRow) TableName() string { return indexkeys.Table }

// indexRows returns the table's rows by id.
func indexRows(t testing.TB, db *gorm.DB) map[int64]indexRow {
	t.Helper()
	var rs []indexRow
	if err := db.Order("id").Find(&rs).Error; err != nil {
		t.Fatal(err)
	}
	m := map[int64]indexRow{}
	for _, r := range rs {
		m[r.ID] = r
	}
	return m
}

// indexStore returns a store on db that caches nothing, its table made.
func indexStore(t testing.TB, db *gorm.DB, keys *dek.Keyring) *indexkeys.Store {
	t.Helper()
	s := indexkeys.New(db, keys, -1)
	if err := s.EnsureTable(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// seedIndexKeys gives each name versions 1 to n under keys and returns
// every key made, live or not, by "name vN".
func seedIndexKeys(t testing.TB, db *gorm.DB, keys *dek.Keyring, n int, names ...string) map[string]dek.DEK {
	t.Helper()
	ctx := context.Background()
	s := indexStore(t, db, keys)
	made := map[string]dek.DEK{}
	for _, name := range names {
		for range n {
			v, err := s.Add(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			made[fmt.Sprintf("%s v%d", name, v.Version)] = v.Key
		}
	}
	return made
}

// checkIndexKeys asserts that every row of the index-key table opens under
// keys, under key index wantIdx (-1: any), to the key it was made with.
func checkIndexKeys(t testing.TB, db *gorm.DB, keys *dek.Keyring, wantIdx int, made map[string]dek.DEK) {
	t.Helper()
	rows := indexRows(t, db)
	if len(rows) != len(made) {
		t.Fatalf("%d index keys stored, %d made", len(rows), len(made))
	}
	for _, r := range rows {
		name := fmt.Sprintf("%s v%d", r.Name, r.Version)
		d, idx, err := keys.Open(context.Background(), r.WrappedKey)
		switch {
		case err != nil:
			t.Fatalf("%s: %v", name, err)
		case d != made[name]:
			t.Fatalf("%s: the key changed", name)
		case wantIdx >= 0 && idx != wantIdx:
			t.Fatalf("%s: opened under key %d, want %d", name, idx, wantIdx)
		}
	}
}

// Run rewraps the index keys with the DEKs, without changing one: the new
// key alone opens them to the same bytes, Live gives the same versions and
// keys, a dry run writes nothing and a rerun has nothing to do.
func TestRunRewrapsIndexKeys(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		oldKey, newK := newKey(t), newKey(t)
		old := keyring(t, oldKey)
		w := newWorld(t, db)
		w.seed(t, old, 1, 40)
		made := seedIndexKeys(t, db, old, 1, "phone")
		for k, v := range seedIndexKeys(t, db, old, 2, "email") {
			made[k] = v
		}
		for k, v := range seedIndexKeys(t, db, old, 3, "ssn") {
			made[k] = v
		}
		if err := indexStore(t, db, old).Retire(ctx, "ssn", 1); err != nil {
			t.Fatal(err)
		}
		before := indexRows(t, db)
		deksBefore := w.dekColumn(t, 7)
		opts := Options{Keys: keyring(t, newK, oldKey), Profile: &Profile{}, BatchSize: 4}

		dry := opts
		dry.DryRun = true
		res, err := Run(ctx, db, dry)
		if err != nil || res.Rotated != 40 || res.IndexKeys != 6 || res.IndexKeysCurrent != 0 {
			t.Fatalf("dry run: %+v, %v", res, err)
		}
		for id, r := range indexRows(t, db) {
			if !bytes.Equal(r.WrappedKey, before[id].WrappedKey) {
				t.Fatal("the dry run wrote an index key")
			}
		}
		if !bytes.Equal(deksBefore, w.dekColumn(t, 7)) {
			t.Fatal("the dry run wrote a DEK")
		}

		res, err = Run(ctx, db, opts)
		if err != nil {
			t.Fatal(err)
		}
		if res.Rotated != 40 || res.AlreadyCurrent != 0 || res.IndexKeys != 6 || res.IndexKeysCurrent != 0 ||
			res.IndexKeysFailed != 0 || res.IndexKeysSkipped != 0 || len(res.IndexFailures) != 0 {
			t.Fatalf("run: %+v", res)
		}
		w.check(t, keyring(t, newK), 0)
		checkIndexKeys(t, db, keyring(t, newK), 0, made)
		for id, r := range indexRows(t, db) {
			if bytes.Equal(r.WrappedKey, before[id].WrappedKey) {
				t.Fatalf("index key %s v%d not rewrapped", r.Name, r.Version)
			}
		}

		// What the app sees under the new key alone is what it saw before.
		s := indexkeys.New(db, keyring(t, newK), 0)
		for name, want := range map[string][]int{"email": {2, 1}, "phone": {1}, "ssn": {3, 2}} {
			vs, err := s.Live(ctx, name, false)
			if err != nil || len(vs) != len(want) {
				t.Fatalf("%s: %d versions, %v", name, len(vs), err)
			}
			for i, v := range vs {
				if v.Version != want[i] || v.Key != made[fmt.Sprintf("%s v%d", name, v.Version)] {
					t.Fatalf("%s: version %d (want %d) or its key changed", name, v.Version, want[i])
				}
			}
		}

		st, err := Verify(ctx, db, opts)
		if err != nil || st.IndexKeys[0].Count != 6 || st.IndexKeys[1].Count != 0 || st.IndexTotal != 6 || !st.Current() {
			t.Fatalf("verify: %+v, %v", st, err)
		}

		after := indexRows(t, db)
		res, err = Run(ctx, db, opts)
		if err != nil || res.Rotated != 0 || res.AlreadyCurrent != 40 || res.IndexKeys != 0 || res.IndexKeysCurrent != 6 {
			t.Fatalf("rerun: %+v, %v", res, err)
		}
		for id, r := range indexRows(t, db) {
			if !bytes.Equal(r.WrappedKey, after[id].WrappedKey) {
				t.Fatal("the rerun wrote an index key")
			}
		}
	})
}

// Status counts index keys per master key and names those no key opens;
// Verify and Run fail on them, and Run still rewraps the rest.
func TestIndexKeysStatusAndFailures(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		k0, k1, lost, newK := newKey(t), newKey(t), newKey(t), newKey(t)
		w := newWorld(t, db)
		w.seed(t, keyring(t, k0), 1, 3)
		made := seedIndexKeys(t, db, keyring(t, k0), 1, "a")
		for k, v := range seedIndexKeys(t, db, keyring(t, k1), 2, "b") {
			made[k] = v
		}
		seedIndexKeys(t, db, keyring(t, lost), 1, "c")
		if err := db.Create(&indexRow{Name: "d", Version: 1, WrappedKey: []byte{}}).Error; err != nil {
			t.Fatal(err)
		}
		opts := Options{Keys: keyring(t, k0, k1), Profile: &Profile{}, BatchSize: 2}

		st, err := Status(ctx, db, opts)
		if err != nil {
			t.Fatal(err)
		}
		if st.IndexKeys[0].Count != 1 || st.IndexKeys[1].Count != 2 || st.IndexUndecryptable != 2 || st.IndexTotal != 5 ||
			st.Keys[0].Count != 3 || st.Undecryptable != 0 || st.Total != 3 || st.Current() {
			t.Fatalf("status %+v", st)
		}
		for i, k := range st.IndexKeys {
			if k.Index != i || k.ID != st.Keys[i].ID {
				t.Errorf("index key count %d: %+v", i, k)
			}
		}
		var named []string
		for _, f := range st.IndexFailures {
			named = append(named, f.Index)
			if f.ID == "" || f.Owner != "" || f.Reason == "" || strings.Contains(f.Reason, "DEK") ||
				!strings.HasPrefix(f.String(), "blind-index key "+f.Index+" (id "+f.ID+"): ") {
				t.Errorf("failure %+v: %s", f, f)
			}
			for _, k := range []string{k0, k1, lost} {
				if strings.Contains(f.String(), k) {
					t.Fatal("a failure holds a key")
				}
			}
		}
		if strings.Join(named, ",") != "c v1,d v1" {
			t.Errorf("failures name %q, want c v1 and d v1", named)
		}

		_, err = Verify(ctx, db, opts)
		var fe *FailedError
		if !errors.As(err, &fe) || fe.Count != 0 || fe.IndexKeys != 2 || !errors.Is(err, dek.ErrDecrypt) ||
			err.Error() != "verify: 2 blind-index keys could not be opened" {
			t.Fatalf("verify: %v", err)
		}

		lostRow := indexRows(t, db)
		res, err := Run(ctx, db, Options{Keys: keyring(t, newK, k0, k1), Profile: &Profile{}, BatchSize: 2})
		if !errors.As(err, &fe) || fe.Count != 0 || fe.IndexKeys != 2 || err.Error() != "rotate: 2 blind-index keys could not be opened" {
			t.Fatalf("run: %v", err)
		}
		if res.Rotated != 3 || res.IndexKeys != 3 || res.IndexKeysFailed != 2 || len(res.IndexFailures) != 2 || res.Failed != 0 || len(res.Failures) != 0 {
			t.Fatalf("run: %+v", res)
		}
		for id, r := range indexRows(t, db) {
			if (r.Name == "c" || r.Name == "d") && !bytes.Equal(r.WrappedKey, lostRow[id].WrappedKey) {
				t.Errorf("the failed index key %s was written", r.Name)
			}
		}
		if err := db.Where("name IN ?", []string{"c", "d"}).Delete(&indexRow{}).Error; err != nil {
			t.Fatal(err)
		}
		checkIndexKeys(t, db, keyring(t, newK), 0, made)
		if _, err := Verify(ctx, db, Options{Keys: keyring(t, newK), Profile: &Profile{}}); err != nil {
			t.Fatalf("verify after removing them: %v", err)
		}
	})
}

// An index key changed between read and write (here by an app instance
// that already has the new primary) is never overwritten.
func TestRunIndexKeysConcurrentChange(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		oldKey, newK := newKey(t), newKey(t)
		newWorld(t, db) // no profiles: every write is of index keys
		made := seedIndexKeys(t, db, keyring(t, oldKey), 5, "email")
		keys := keyring(t, newK, oldKey)
		resealed, err := keys.Seal(ctx, made["email v3"])
		if err != nil {
			t.Fatal(err)
		}
		other := testdb.Reopen(t, db)
		calls := 0
		res, err := Run(ctx, db, Options{Keys: keys, Profile: &Profile{}, beforeWrite: func(attempt int) {
			if calls++; attempt != 1 {
				return
			}
			if err := other.Model(&indexRow{}).Where("name = ? AND version = ?", "email", 3).Update("wrapped_key", resealed).Error; err != nil {
				t.Error(err)
			}
		}})
		if err != nil {
			t.Fatal(err)
		}
		if calls != 1 || res.IndexKeys != 4 || res.IndexKeysCurrent != 1 || res.IndexKeysSkipped != 0 {
			t.Fatalf("%d writes, %+v", calls, res)
		}
		for _, r := range indexRows(t, db) {
			if r.Version == 3 && !bytes.Equal(r.WrappedKey, resealed) {
				t.Fatal("the concurrent change was overwritten")
			}
		}
		checkIndexKeys(t, db, keyring(t, newK), 0, made)
	})
}

// Without the index-key table there is nothing to do, and no error.
func TestNoIndexKeyTable(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	ctx := context.Background()
	k := newKey(t)
	w := newWorld(t, db)
	w.seed(t, keyring(t, k), 1, 3)
	opts := Options{Keys: keyring(t, newKey(t), k), Profile: &Profile{}}
	res, err := Run(ctx, db, opts)
	if err != nil || res.Rotated != 3 || res.IndexKeys != 0 || res.IndexKeysCurrent != 0 {
		t.Fatalf("run: %+v, %v", res, err)
	}
	st, err := Verify(ctx, db, opts)
	if err != nil || st.IndexTotal != 0 || len(st.IndexKeys) != 2 || st.IndexKeys[0].Count+st.IndexKeys[1].Count != 0 || !st.Current() {
		t.Fatalf("verify: %+v, %v", st, err)
	}
	if ok, err := indexkeys.Exists(ctx, db); ok || err != nil {
		t.Fatalf("the table was created (%v)", err)
	}
}

// A FailedError counts what failed, DEKs and index keys, in one line.
func TestFailedErrorText(t *testing.T) {
	for i, tc := range []struct {
		e    FailedError
		want string
	}{
		{FailedError{Op: "rotate", Count: 3}, "rotate: 3 DEKs could not be opened"},
		{FailedError{Op: "verify", Count: 1}, "verify: 1 DEK could not be opened"},
		{FailedError{Op: "verify", IndexKeys: 1}, "verify: 1 blind-index key could not be opened"},
		{FailedError{Op: "rotate", Count: 2, IndexKeys: 3}, "rotate: 2 DEKs and 3 blind-index keys could not be opened"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("#%d: got %q, want %q", i, got, tc.want)
		}
	}
}
