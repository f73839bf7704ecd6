package rotate

import (
	"bytes"
	"context"
	"fmt"
	"testing"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/internal/testdb"
)

// Every writer a dialect can use swaps exactly the rows that still hold the
// expected value (or are still empty), and reports which.
func TestWriters(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		if err := db.AutoMigrate(&Profile{}); err != nil {
			t.Fatal(err)
		}
		opts := Options{Keys: keyring(t, newKey(t)), Profile: &Profile{}}
		tg, err := opts.resolve(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		writers := map[string]writer{"per-row": perRow{tg}}
		switch tg.dialect {
		case "postgres":
			if !tg.pgx {
				t.Fatal("PostgreSQL through gorm.io/driver/postgres not recognised as pgx")
			}
			writers["bulk"] = pgBulk{tg}
		case "mysql":
			writers["bulk"] = myBulk{tg}
		}
		for name, w := range writers {
			t.Run(name, func(t *testing.T) {
				db.Where("1 = 1").Delete(&Profile{})
				rows := []Profile{
					{ID: 1, UserID: 1, EncryptedDEK: []byte("a\xff\x00")},
					{ID: 2, UserID: 2, EncryptedDEK: []byte("b")},
					{ID: 3, UserID: 3},
					{ID: 4, UserID: 4, EncryptedDEK: []byte{}},
				}
				if err := db.Create(&rows).Error; err != nil {
					t.Fatal(err)
				}
				cs := []change{
					{id: int64(1), old: []byte("a\xff\x00"), new: []byte("A\x00\xfe")}, // still holds it: swapped
					{id: int64(2), old: []byte("stale"), new: []byte("B")},             // changed meanwhile: kept
					{id: int64(99), old: []byte("x"), new: []byte("X")},                // gone
				}
				apply := func(cs []change, emptyOnly bool) (done []bool, err error) {
					err = db.Transaction(func(tx *gorm.DB) error {
						done, err = w.apply(ctx, tx.Statement.ConnPool, cs, emptyOnly)
						return err
					})
					return done, err
				}
				done, err := apply(cs, false)
				if err != nil {
					t.Fatal(err)
				}
				if want := []bool{true, false, false}; !equalBools(done, want) {
					t.Errorf("swap: done %v, want %v", done, want)
				}
				done, err = apply([]change{
					{id: int64(2), new: []byte("B2")}, // not empty: kept
					{id: int64(3), new: []byte("C")},  // NULL: filled
					{id: int64(4), new: []byte("D")},  // empty: filled
				}, true)
				if err != nil {
					t.Fatal(err)
				}
				if want := []bool{false, true, true}; !equalBools(done, want) {
					t.Errorf("fill: done %v, want %v", done, want)
				}
				var got []Profile
				db.Order("id").Find(&got)
				for i, want := range []string{"A\x00\xfe", "b", "C", "D"} {
					if !bytes.Equal(got[i].EncryptedDEK, []byte(want)) {
						t.Errorf("row %d holds %q, want %q", i+1, got[i].EncryptedDEK, want)
					}
				}
			})
		}
	})
}

func equalBools(a, b []bool) bool {
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

// A batch larger than one bulk statement carries, with some rows changed
// meanwhile: the dialect's writer swaps exactly the others, whichever way it
// learns which rows it wrote (all, none, or some of a statement's rows).
func TestWriterLargeBatch(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		if err := db.AutoMigrate(&Profile{}); err != nil {
			t.Fatal(err)
		}
		const n = 2*myBulkRows + 100
		rows := make([]Profile, n)
		for i := range rows {
			rows[i] = Profile{ID: uint(i + 1), UserID: uint(i + 1), EncryptedDEK: fmt.Appendf(nil, "old-%d", i+1)}
		}
		if err := db.CreateInBatches(rows, 500).Error; err != nil {
			t.Fatal(err)
		}
		opts := Options{Keys: keyring(t, newKey(t)), Profile: &Profile{}}
		tg, err := opts.resolve(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		// The first statement's rows all match, the second's none, the
		// third's every seventh.
		stale := func(id int) bool {
			switch {
			case id <= myBulkRows:
				return false
			case id <= 2*myBulkRows:
				return true
			}
			return id%7 != 0
		}
		cs := make([]change, n)
		for i := range cs {
			id := i + 1
			old := fmt.Appendf(nil, "old-%d", id)
			if stale(id) {
				old = []byte("stale")
			}
			cs[i] = change{id: int64(id), old: old, new: fmt.Appendf(nil, "new-%d", id)}
		}
		done, err := tg.write(ctx, cs, false)
		if err != nil {
			t.Fatal(err)
		}
		var got []Profile
		if err := db.Order("id").Find(&got).Error; err != nil {
			t.Fatal(err)
		}
		bad := 0
		for i, p := range got {
			id := i + 1
			want := fmt.Sprintf("new-%d", id)
			if stale(id) {
				want = fmt.Sprintf("old-%d", id)
			}
			if string(p.EncryptedDEK) != want || done[i] == stale(id) {
				t.Errorf("id %d: holds %q, done %v; want %q", id, p.EncryptedDEK, done[i], want)
				if bad++; bad > 5 {
					t.FailNow()
				}
			}
		}
	})
}

// Every batch of a table with an integer key gets the bulk writer: the
// first batch is read without bind parameters, which MySQL answers in its
// text protocol, with BIGINT UNSIGNED keys as uint64.
func TestBatchIDsAreInt64(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		w := newWorld(t, db)
		w.seed(t, keyring(t, newKey(t)), 1, 5)
		opts := Options{Keys: keyring(t, newKey(t)), Profile: &Profile{}, BatchSize: 2}
		tg, err := opts.resolve(ctx, db)
		if err != nil {
			t.Fatal(err)
		}
		batches := 0
		err = tg.scan(ctx, "", func(rows []row) error {
			batches++
			for _, r := range rows {
				if _, ok := r.id.(int64); !ok {
					t.Errorf("batch %d: id %v is a %T, want int64", batches, r.id, r.id)
				}
			}
			return nil
		})
		if err != nil || batches != 3 {
			t.Fatalf("%d batches, %v", batches, err)
		}
	})
}
