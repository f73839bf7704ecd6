package indexkeys

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

func newKey(t testing.TB) string {
	t.Helper()
	k, err := dek.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func keyring(t testing.TB, primary string, previous ...string) *dek.Keyring {
	t.Helper()
	r, err := dek.ParseKeyring(primary, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// newStore returns a store on db whose table exists.
func newStore(t testing.TB, db *gorm.DB, keys *dek.Keyring, ttl time.Duration) *Store {
	t.Helper()
	s := New(db, keys, ttl)
	if err := s.EnsureTable(context.Background()); err != nil {
		t.Fatal(err)
	}
	return s
}

// versions returns the version numbers of vs, in order.
func versions(vs []Version) []int {
	var out []int
	for _, v := range vs {
		out = append(out, v.Version)
	}
	return out
}

func sameInts(a, b []int) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// stored returns every row of the table as "name/version" -> wrapped key.
func stored(t testing.TB, db *gorm.DB) map[string][]byte {
	t.Helper()
	type r struct {
		Name       string
		Version    int
		WrappedKey []byte
	}
	var rs []r
	if err := db.Table(Table).Select("name, version, wrapped_key").Find(&rs).Error; err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, x := range rs {
		m[fmt.Sprintf("%s/%d", x.Name, x.Version)] = x.WrappedKey
	}
	return m
}

// Eight first callers on two stores (two handles, as two processes would
// have) make one version 1 and all get its key; so do concurrent
// EnsureTable calls make one table.
func TestLiveCreatesOnce(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		keys := keyring(t, newKey(t))
		stores := []*Store{New(db, keys, 0), New(testdb.Reopen(t, db), keys, 0)}

		const callers = 8
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, callers)
		for i := range callers {
			wg.Go(func() {
				<-start
				errs[i] = stores[i%2].EnsureTable(ctx)
			})
		}
		close(start)
		wg.Wait()
		for i, err := range errs {
			if err != nil {
				t.Fatalf("#%d: EnsureTable: %v", i, err)
			}
		}

		got := make([][]Version, callers)
		start = make(chan struct{})
		for i := range callers {
			wg.Go(func() {
				<-start
				got[i], errs[i] = stores[i%2].Live(ctx, "credentials.email", true)
			})
		}
		close(start)
		wg.Wait()
		for i := range callers {
			if errs[i] != nil {
				t.Fatalf("#%d: %v", i, errs[i])
			}
			if !sameInts(versions(got[i]), []int{1}) {
				t.Fatalf("#%d: versions %v, want [1]", i, versions(got[i]))
			}
			if got[i][0].Key != got[0][0].Key {
				t.Fatalf("#%d: a different key from #0", i)
			}
		}
		if got[0][0].Key == (dek.DEK{}) {
			t.Fatal("the key is all zeros")
		}
		var n int64
		if err := db.Table(Table).Count(&n).Error; err != nil || n != 1 {
			t.Fatalf("%d rows, %v; want 1", n, err)
		}
		// A store that caches nothing reads the same key back.
		fresh, err := New(db, keys, -1).Live(ctx, "credentials.email", false)
		if err != nil || len(fresh) != 1 || fresh[0].Key != got[0][0].Key {
			t.Fatalf("read back: %v, %v", versions(fresh), err)
		}
		if err := stores[0].EnsureTable(ctx); err != nil {
			t.Fatalf("EnsureTable again: %v", err)
		}
	})
}

// Without create, a name with no key has none, and none is made.
func TestLiveWithoutCreate(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		s := newStore(t, db, keyring(t, newKey(t)), 0)
		vs, err := s.Live(ctx, "users.email", false)
		if vs != nil || err != nil {
			t.Fatalf("got %v, %v; want nil, nil", vs, err)
		}
		names, err := s.Names(ctx)
		if len(names) != 0 || err != nil {
			t.Fatalf("names %q, %v", names, err)
		}
		// Not cached as absent: a key made elsewhere is seen at once.
		if _, err := New(db, s.keys, 0).Live(ctx, "users.email", true); err != nil {
			t.Fatal(err)
		}
		if vs, err := s.Live(ctx, "users.email", false); err != nil || !sameInts(versions(vs), []int{1}) {
			t.Fatalf("after another store made it: %v, %v", versions(vs), err)
		}
	})
}

// Add makes a new active version; Retire drops an old one from the live
// set; the active version cannot be retired; retired keys stay stored.
func TestAddAndRetire(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		keys := keyring(t, newKey(t))
		s := newStore(t, db, keys, 0)
		v1, err := s.Live(ctx, "email", true)
		if err != nil {
			t.Fatal(err)
		}
		v2, err := s.Add(ctx, "email")
		if err != nil || v2.Version != 2 || v2.Key == v1[0].Key {
			t.Fatalf("Add: version %d, %v (same key as v1: %t)", v2.Version, err, v2.Key == v1[0].Key)
		}
		// Through this store at once, through a new one from the table.
		for _, st := range []*Store{s, New(db, keys, 0)} {
			vs, err := st.Live(ctx, "email", false)
			if err != nil || !sameInts(versions(vs), []int{2, 1}) {
				t.Fatalf("after Add: %v, %v; want [2 1]", versions(vs), err)
			}
			if vs[0].Key != v2.Key || vs[1].Key != v1[0].Key {
				t.Fatal("after Add: keys differ from those made")
			}
		}

		var ae *ActiveError
		if err := s.Retire(ctx, "email", 2); !errors.As(err, &ae) || !errors.Is(err, ErrActive) || ae.Version != 2 || ae.Name != "email" {
			t.Fatalf("retire the active version: %v", err)
		}
		if err := s.Retire(ctx, "email", 1); err != nil {
			t.Fatal(err)
		}
		vs, err := s.Live(ctx, "email", true)
		if err != nil || !sameInts(versions(vs), []int{2}) || vs[0].Key != v2.Key {
			t.Fatalf("after Retire: %v, %v; want [2]", versions(vs), err)
		}
		if err := s.Retire(ctx, "email", 1); err != nil {
			t.Fatalf("retire again: %v", err)
		}
		if err := s.Retire(ctx, "email", 2); !errors.Is(err, ErrActive) {
			t.Fatalf("retire the last live version: %v", err)
		}
		if err := s.Retire(ctx, "email", 7); !errors.Is(err, ErrNoVersion) {
			t.Fatalf("retire a version that does not exist: %v", err)
		}
		if err := s.Retire(ctx, "phone", 1); !errors.Is(err, ErrNoVersion) {
			t.Fatalf("retire a name that does not exist: %v", err)
		}
		// The next version follows the newest, retired or not.
		v3, err := s.Add(ctx, "email")
		if err != nil || v3.Version != 3 {
			t.Fatalf("second Add: %d, %v", v3.Version, err)
		}
		if vs, _ := s.Live(ctx, "email", false); !sameInts(versions(vs), []int{3, 2}) {
			t.Fatalf("after the second Add: %v", versions(vs))
		}
		if err := s.Retire(ctx, "email", 3); !errors.Is(err, ErrActive) {
			t.Fatalf("retire the active version of two live: %v", err)
		}
		if n := len(stored(t, db)); n != 3 {
			t.Fatalf("%d rows stored, want 3 (retired ones are kept)", n)
		}
		if _, err := s.Add(ctx, "phone"); err != nil {
			t.Fatal(err)
		}
		names, err := s.Names(ctx)
		if err != nil || strings.Join(names, ",") != "email,phone" {
			t.Fatalf("names %q, %v", names, err)
		}
	})
}

// Adds racing from one intent (eight callers, two stores, all having read
// the same newest version) make one new version, and all return it.
func TestConcurrentAdd(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		keys := keyring(t, newKey(t))
		stores := []*Store{newStore(t, db, keys, 0), New(testdb.Reopen(t, db), keys, 0)}
		if _, err := stores[0].Live(ctx, "email", true); err != nil {
			t.Fatal(err)
		}
		const callers = 8
		var read sync.WaitGroup
		read.Add(callers)
		for _, s := range stores {
			// Every caller has read version 1 as the newest before any inserts.
			s.beforeInsert = func() { read.Done(); read.Wait() }
		}
		var wg sync.WaitGroup
		got := make([]Version, callers)
		errs := make([]error, callers)
		for i := range callers {
			wg.Go(func() { got[i], errs[i] = stores[i%2].Add(ctx, "email") })
		}
		wg.Wait()
		for i := range callers {
			if errs[i] != nil || got[i].Version != 2 || got[i].Key != got[0].Key {
				t.Fatalf("#%d: version %d, %v (same key as #0: %t)", i, got[i].Version, errs[i], got[i].Key == got[0].Key)
			}
		}
		if n := len(stored(t, db)); n != 2 {
			t.Fatalf("%d versions stored, want 2", n)
		}
		for _, s := range stores {
			vs, err := s.Live(ctx, "email", false)
			if err != nil || !sameInts(versions(vs), []int{2, 1}) || vs[0].Key != got[0].Key {
				t.Fatalf("Live: %v, %v", versions(vs), err)
			}
		}
	})
}

// A stored key that no key of the keyring opens is an OpenError wrapping
// dek.ErrDecrypt that names the index and version and holds no key.
func TestUnknownMasterKey(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		lost := newKey(t)
		other := newStore(t, db, keyring(t, lost), -1)
		vs, err := other.Live(ctx, "ssn", true)
		if err != nil {
			t.Fatal(err)
		}
		mine := newKey(t)
		_, err = New(db, keyring(t, mine), 0).Live(ctx, "ssn", false)
		var oe *OpenError
		if !errors.Is(err, dek.ErrDecrypt) || !errors.As(err, &oe) || oe.Name != "ssn" || oe.Version != 1 {
			t.Fatalf("got %v, want an OpenError for ssn version 1 wrapping ErrDecrypt", err)
		}
		msg := err.Error()
		if !strings.Contains(msg, `"ssn" version 1`) || !strings.Contains(msg, "no configured master key opens") ||
			strings.Contains(msg, "DEK") || strings.Count(msg, "\n") != 0 {
			t.Errorf("message %q", msg)
		}
		k := vs[0].Key
		wrapped := stored(t, db)["ssn/1"]
		for _, secret := range []string{lost, mine, string(k[:]), base64.URLEncoding.EncodeToString(k[:]), string(wrapped)} {
			if strings.Contains(msg, secret) {
				t.Fatal("the error holds key material or the stored key")
			}
		}
		// A keyring with the lost key as a previous one opens it.
		if vs2, err := New(db, keyring(t, mine, lost), 0).Live(ctx, "ssn", false); err != nil || vs2[0].Key != k {
			t.Fatalf("with the lost key as previous: %v", err)
		}
	})
}

// Without a keyring, Live and Add fail with ErrNoKey and write nothing;
// Retire and Names need no keyring.
func TestNoKeyring(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	ctx := context.Background()
	s := newStore(t, db, nil, 0)
	if _, err := s.Live(ctx, "email", true); !errors.Is(err, ErrNoKey) || !errors.Is(err, dek.ErrNoKey) {
		t.Fatalf("Live: %v", err)
	}
	if _, err := s.Add(ctx, "email"); !errors.Is(err, ErrNoKey) {
		t.Fatalf("Add: %v", err)
	}
	if n := len(stored(t, db)); n != 0 {
		t.Fatalf("%d rows written", n)
	}
	if names, err := s.Names(ctx); err != nil || len(names) != 0 {
		t.Fatalf("Names: %q, %v", names, err)
	}
	if err := s.Retire(ctx, "email", 1); !errors.Is(err, ErrNoVersion) {
		t.Fatalf("Retire: %v", err)
	}
}

// Names outside the accepted form are refused before any SQL.
func TestNames(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	s := newStore(t, db, keyring(t, newKey(t)), 0)
	for _, name := range []string{"", " email", "email ", "e\x00mail", "e\nmail", strings.Repeat("a", MaxNameLen+1), "\xff"} {
		if _, err := s.Live(context.Background(), name, true); err == nil || !strings.Contains(err.Error(), "blind-index name") {
			t.Errorf("%q: %v", name, err)
		}
	}
	for _, name := range []string{"a", "credentials.api_key", "Benutzer.E-Mail", strings.Repeat("a", MaxNameLen)} {
		if _, err := s.Live(context.Background(), name, true); err != nil {
			t.Errorf("%q: %v", name, err)
		}
	}
	// Names differing only in case are two names.
	a, _ := s.Live(context.Background(), "a", false)
	if b, err := s.Live(context.Background(), "A", true); err != nil || b[0].Key == a[0].Key {
		t.Fatalf("A and a share a key (%v)", err)
	}
}

// The handle must be a root handle, and the dialect one the store knows.
func TestNewRefusesTransaction(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	keys := keyring(t, newKey(t))
	err := db.Transaction(func(tx *gorm.DB) error {
		_, err := New(tx, keys, 0).Live(context.Background(), "email", true)
		return err
	})
	if err == nil || !strings.Contains(err.Error(), "transaction") {
		t.Fatalf("a store on a transaction: %v", err)
	}
	if err := New(nil, keys, 0).EnsureTable(context.Background()); err == nil {
		t.Fatal("a store on a nil handle: no error")
	}
}

// A key made while a caller's transaction is open is the store's own
// statement: the caller's rollback does not take it away.
func TestLiveSurvivesCallerRollback(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		keys := keyring(t, newKey(t))
		s := newStore(t, db, keys, 0)
		type Note struct {
			ID   uint
			Body string
		}
		if err := db.AutoMigrate(&Note{}); err != nil {
			t.Fatal(err)
		}
		var made []Version
		rollback := errors.New("roll back")
		err := db.Transaction(func(tx *gorm.DB) error {
			if testdb.DialectOf(db) != testdb.SQLite {
				// SQLite's write lock would hold the store's insert back.
				if err := tx.Create(&Note{Body: "x"}).Error; err != nil {
					return err
				}
			}
			var err error
			if made, err = s.Live(ctx, "email", true); err != nil {
				return err
			}
			return rollback
		})
		if !errors.Is(err, rollback) {
			t.Fatal(err)
		}
		vs, err := New(db, keys, 0).Live(ctx, "email", false)
		if err != nil || len(vs) != 1 || vs[0].Key != made[0].Key {
			t.Fatalf("after the rollback: %v, %v", versions(vs), err)
		}
	})
}

// countingKey counts the decryptions of a master key.
type countingKey struct {
	dek.Encrypter
	n atomic.Int64
}

func (c *countingKey) Decrypt(ctx context.Context, ct []byte) ([]byte, error) {
	c.n.Add(1)
	return c.Encrypter.Decrypt(ctx, ct)
}

// A store caches a name's versions for its ttl: it sees another store's
// changes only once the entry is that old, its own at once, and it opens
// each stored key once, however many callers and refills.
func TestCache(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		fk, err := dek.ParseKey(newKey(t))
		if err != nil {
			t.Fatal(err)
		}
		ck := &countingKey{Encrypter: fk}
		keys, err := dek.NewKeyring(ck)
		if err != nil {
			t.Fatal(err)
		}
		writer := newStore(t, db, keys, -1)
		if _, err := writer.Live(ctx, "email", true); err != nil {
			t.Fatal(err)
		}
		if _, err := writer.Add(ctx, "email"); err != nil {
			t.Fatal(err)
		}

		now := time.Unix(1000, 0)
		var mu sync.Mutex
		s := New(db, keys, time.Minute)
		s.now = func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
		advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }

		ck.n.Store(0)
		var wg sync.WaitGroup
		for range 8 {
			wg.Go(func() {
				if vs, err := s.Live(ctx, "email", false); err != nil || len(vs) != 2 {
					t.Errorf("cold Live: %v, %v", versions(vs), err)
				}
			})
		}
		wg.Wait()
		if n := ck.n.Load(); n != 2 {
			t.Fatalf("%d decryptions for 2 versions on a cold cache, want 2", n)
		}

		// Another store's change is seen once the entry has expired.
		if _, err := writer.Add(ctx, "email"); err != nil {
			t.Fatal(err)
		}
		advance(59 * time.Second)
		if vs, _ := s.Live(ctx, "email", false); !sameInts(versions(vs), []int{2, 1}) {
			t.Fatalf("within the ttl: %v, want the cached [2 1]", versions(vs))
		}
		ck.n.Store(0)
		advance(2 * time.Second)
		if vs, _ := s.Live(ctx, "email", false); !sameInts(versions(vs), []int{3, 2, 1}) {
			t.Fatalf("after the ttl: %v, want [3 2 1]", versions(vs))
		}
		if n := ck.n.Load(); n != 1 {
			t.Fatalf("refill opened %d keys, want 1 (only the new version)", n)
		}

		// Its own changes at once.
		if err := s.Retire(ctx, "email", 1); err != nil {
			t.Fatal(err)
		}
		if vs, _ := s.Live(ctx, "email", false); !sameInts(versions(vs), []int{3, 2}) {
			t.Fatalf("after its own Retire: %v", versions(vs))
		}
		v4, err := s.Add(ctx, "email")
		if err != nil {
			t.Fatal(err)
		}
		if vs, _ := s.Live(ctx, "email", false); !sameInts(versions(vs), []int{4, 3, 2}) || vs[0].Key != v4.Key {
			t.Fatalf("after its own Add: %v", versions(vs))
		}

		// Retiring what another store retired: seen at once.
		if err := writer.Retire(ctx, "email", 2); err != nil {
			t.Fatal(err)
		}
		if err := s.Retire(ctx, "email", 2); err != nil {
			t.Fatal(err)
		}
		if vs, _ := s.Live(ctx, "email", false); !sameInts(versions(vs), []int{4, 3}) {
			t.Fatalf("after retiring what another store retired: %v", versions(vs))
		}

		// Forget drops the cache: another store's retirement is seen.
		if err := writer.Retire(ctx, "email", 3); err != nil {
			t.Fatal(err)
		}
		if vs, _ := s.Live(ctx, "email", false); len(vs) != 2 {
			t.Fatalf("before Forget: %v", versions(vs))
		}
		ck.n.Store(0)
		s.Forget()
		if vs, _ := s.Live(ctx, "email", false); !sameInts(versions(vs), []int{4}) {
			t.Fatalf("after Forget: %v", versions(vs))
		}
		if n := ck.n.Load(); n != 1 {
			t.Fatalf("after Forget, %d keys opened, want 1", n)
		}

		// With no cache, every call reads the table.
		nc := New(db, keys, -1)
		for range 2 {
			if _, err := nc.Live(ctx, "email", false); err != nil {
				t.Fatal(err)
			}
		}
		if len(nc.entries) != 0 {
			t.Fatal("a store with a negative ttl cached")
		}
	})
}

// A cached Live allocates nothing and returns the cached slice.
func TestLiveCachedAllocs(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	ctx := context.Background()
	s := newStore(t, db, keyring(t, newKey(t)), time.Hour)
	first, err := s.Live(ctx, "email", true)
	if err != nil {
		t.Fatal(err)
	}
	var got []Version
	allocs := testing.AllocsPerRun(100, func() {
		got, _ = s.Live(ctx, "email", true)
	})
	if allocs != 0 {
		t.Errorf("%v allocations per cached Live, want 0", allocs)
	}
	if len(got) != 1 || &got[0] != &first[0] {
		t.Error("a cached Live did not return the cached slice")
	}
}

// The stored form is a DEK's: the keyring opens it to the key Live gives.
func TestStoredLikeADEK(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	ctx := context.Background()
	keys := keyring(t, newKey(t))
	s := newStore(t, db, keys, 0)
	vs, err := s.Live(ctx, "email", true)
	if err != nil {
		t.Fatal(err)
	}
	wrapped := stored(t, db)["email/1"]
	k, idx, err := keys.Open(ctx, wrapped)
	if err != nil || idx != 0 || k != vs[0].Key {
		t.Fatalf("the stored key does not open as a DEK: %v", err)
	}
	if bytes.Contains(wrapped, vs[0].Key[:]) {
		t.Fatal("the key is stored in the clear")
	}
}

// LiveTx creates the table and the key in the transaction, and a rollback
// takes both away.
func TestLiveTxRollsBack(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	s := New(db, keyring(t, newKey(t)), time.Minute)
	ctx := context.Background()
	tx := db.Begin()
	vs, err := s.LiveTx(ctx, tx, "users.email", true)
	if err != nil || len(vs) != 1 || vs[0].Version != 1 {
		t.Fatalf("LiveTx: %v %v", vs, err)
	}
	again, err := s.LiveTx(ctx, tx, "users.email", false)
	if err != nil || len(again) != 1 || again[0].Key != vs[0].Key {
		t.Fatalf("LiveTx again: %v %v", again, err)
	}
	if err := tx.Rollback().Error; err != nil {
		t.Fatal(err)
	}
	if got, err := s.Live(ctx, "users.email", false); err != nil || got != nil {
		t.Fatalf("after rollback: %v %v", got, err)
	}
}
