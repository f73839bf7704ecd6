package envelope_test

import (
	"errors"
	"fmt"
	"maps"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// recorder is an Observer that counts what it is told, keyed by its
// arguments, and keeps every string it was passed.
type recorder struct {
	mu    sync.Mutex
	enc   map[string]int // "Model.Field"
	dec   map[string]int // "Model.Field"
	fail  map[string]int // "Model.Field:kind"
	cache map[string]int // event
	calls map[string]int // op, or op+":error"
	args  []string
}

func newRecorder() *recorder {
	r := &recorder{}
	r.reset()
	return r
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.enc, r.dec, r.fail, r.cache, r.calls = map[string]int{}, map[string]int{}, map[string]int{}, map[string]int{}, map[string]int{}
	r.args = nil
}

func (r *recorder) ValuesEncrypted(model, field string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.enc[model+"."+field] += n
	r.args = append(r.args, model, field)
}

func (r *recorder) ValuesDecrypted(model, field string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dec[model+"."+field] += n
	r.args = append(r.args, model, field)
}

func (r *recorder) ValuesFailed(model, field string, kind error, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := "other"
	switch kind {
	case envelope.ErrDecrypt:
		k = "decrypt"
	case envelope.ErrShredded:
		k = "shredded"
	case envelope.ErrNoKey:
		k = "no_key"
	case envelope.ErrNoOwner:
		k = "no_owner"
	case envelope.ErrUnsafe:
		k = "unsafe"
	}
	r.fail[model+"."+field+":"+k] += n
	r.args = append(r.args, model, field)
}

func (r *recorder) DEKCache(event string, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cache[event] += n
	r.args = append(r.args, event)
}

func (r *recorder) MasterKeyCall(op string, d time.Duration, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d < 0 {
		panic("negative duration")
	}
	if err != nil {
		op += ":error"
		r.args = append(r.args, err.Error())
	}
	r.calls[op]++
	r.args = append(r.args, op)
}

// check compares the counts of one kind with want, then forgets them all.
func (r *recorder) check(t *testing.T, what string, got map[string]int, want map[string]int) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	if !maps.Equal(got, want) {
		t.Errorf("%s: got %v, want %v", what, got, want)
	}
}

// noLeak fails if any string the observer was passed holds one of secrets.
func (r *recorder) noLeak(t *testing.T, secrets ...string) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, a := range r.args {
		for _, s := range secrets {
			if strings.Contains(a, s) {
				t.Errorf("observer was passed %q, which holds %q", a, s)
			}
		}
	}
}

func TestObserver(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		rec := newRecorder()
		keys := newKeys(t)
		p := setup(t, db, keys, envelope.Config{Observer: rec})

		// First write of a new owner: a miss, a new DEK sealed under the
		// master key (and read back without opening it again).
		rec.reset()
		rows := []Credential{
			{UserID: 7001, Password: "secret-a", APIKey: ptr("secret-key-a")},
			{UserID: 7001, Password: "secret-b", Blob: []byte("secret-blob")},
			{UserID: 7001, Password: "secret-c"},
		}
		must(t, db.Create(&rows).Error)
		rec.check(t, "create: encrypted", rec.enc, map[string]int{"Credential.Password": 3, "Credential.APIKey": 1, "Credential.Blob": 1})
		rec.check(t, "create: cache", rec.cache, map[string]int{"miss": 1, "create": 1})
		rec.check(t, "create: master key", rec.calls, map[string]int{"encrypt": 1})

		// A warm read: a hit, no master-key call.
		rec.reset()
		var got []Credential
		must(t, db.Order("id").Find(&got).Error)
		if len(got) != 3 || got[0].Password != "secret-a" {
			t.Fatalf("read back %+v", got)
		}
		rec.check(t, "warm read: decrypted", rec.dec, map[string]int{"Credential.Password": 3, "Credential.APIKey": 1, "Credential.Blob": 1})
		rec.check(t, "warm read: cache", rec.cache, map[string]int{"hit": 1})
		rec.check(t, "warm read: master key", rec.calls, map[string]int{})

		// A cold read of one row: a miss, a load, one master-key decrypt.
		envelope.PurgeCacheForTest(p)
		rec.reset()
		var one Credential
		must(t, db.First(&one, rows[0].ID).Error)
		rec.check(t, "cold read: decrypted", rec.dec, map[string]int{"Credential.Password": 1, "Credential.APIKey": 1})
		rec.check(t, "cold read: cache", rec.cache, map[string]int{"miss": 1, "load": 1})
		rec.check(t, "cold read: master key", rec.calls, map[string]int{"decrypt": 1})

		// A tampered value fails with ErrDecrypt; the others still open.
		stored, _ := rawColumn(t, db, "credentials", "password", rows[1].ID)
		b := []byte(stored)
		b[len(b)/2] ^= 1
		must(t, db.Exec("UPDATE credentials SET password = ? WHERE id = ?", string(b), rows[1].ID).Error)
		rec.reset()
		got = nil
		if err := db.Order("id").Find(&got).Error; !errors.Is(err, envelope.ErrDecrypt) {
			t.Fatalf("tampered read: %v, want ErrDecrypt", err)
		}
		rec.check(t, "tampered: failed", rec.fail, map[string]int{"Credential.Password:decrypt": 1})
		rec.check(t, "tampered: decrypted", rec.dec, map[string]int{"Credential.Password": 2, "Credential.APIKey": 1, "Credential.Blob": 1})

		// A query comparing an encrypted field is refused: ErrUnsafe.
		rec.reset()
		if err := db.Where(&Credential{Password: "secret-a"}).Find(&got).Error; !errors.Is(err, envelope.ErrUnsafe) {
			t.Fatalf("compare: %v, want ErrUnsafe", err)
		}
		rec.check(t, "unsafe: failed", rec.fail, map[string]int{"Credential.Password:unsafe": 1})

		// A shredded owner's values fail with ErrShredded, on read and write.
		must(t, db.Create(&Credential{UserID: 7002, Password: "secret-d"}).Error)
		must(t, envelope.Shred(db, uint(7002)))
		rec.reset()
		if err := db.Where("user_id = ?", 7002).First(&Credential{}).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("read after shred: %v, want ErrShredded", err)
		}
		if err := db.Create(&Credential{UserID: 7002, Password: "secret-e"}).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("write after shred: %v, want ErrShredded", err)
		}
		rec.check(t, "shredded: failed", rec.fail, map[string]int{"Credential.Password:shredded": 2})
		rec.check(t, "shredded: encrypted", rec.enc, map[string]int{})
		rec.noLeak(t, "secret", "7001", "7002")

		// A plugin without master keys: ErrNoKey on read and write, and no
		// master-key call.
		norec := newRecorder()
		nokey := testdb.Reopen(t, db)
		must(t, nokey.Use(envelope.New(envelope.Config{Profile: &Profile{}, Observer: norec, Logger: slogLogger(&slogCapture{})})))
		got = nil
		if err := nokey.Where("user_id = ?", 7001).Find(&got).Error; !errors.Is(err, envelope.ErrNoKey) {
			t.Fatalf("read without keys: %v, want ErrNoKey", err)
		}
		if err := nokey.Create(&Credential{UserID: 7001, Password: "secret-f", Blob: []byte("secret-g")}).Error; !errors.Is(err, envelope.ErrNoKey) {
			t.Fatalf("write without keys: %v, want ErrNoKey", err)
		}
		norec.check(t, "no key: failed", norec.fail, map[string]int{
			"Credential.Password:no_key": 4, // three read, one written
			"Credential.APIKey:no_key":   1,
			"Credential.Blob:no_key":     2,
		})
		norec.check(t, "no key: master key", norec.calls, map[string]int{})
		norec.noLeak(t, "secret", "7001")
	})
}

// TestObserverMasterKeyErrors: a master key that opens no stored DEK is
// reported as a failed decrypt call.
func TestObserverMasterKeyErrors(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, newKeys(t))
	for u := uint(1); u <= 3; u++ {
		must(t, db.Create(&Credential{UserID: u, Password: fmt.Sprint("secret-", u)}).Error)
	}
	rec := newRecorder()
	other := testdb.Reopen(t, db)
	if err := other.Use(envelope.New(envelope.Config{Keys: newKeys(t), Profile: &Profile{}, Observer: rec})); !errors.Is(err, envelope.ErrDecrypt) {
		t.Fatalf("db.Use with the wrong key: %v, want ErrDecrypt", err)
	}
	rec.check(t, "wrong key: master key", rec.calls, map[string]int{"decrypt:error": 3})
	rec.noLeak(t, "secret")
}

// TestObserverPipelined: a large warm read, whose values the pipeline
// opens while the result is scanned, is counted like any other, once per
// field.
func TestObserverPipelined(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		rec := newRecorder()
		p := setup(t, db, newKeys(t), envelope.Config{Observer: rec})
		const n = 1500
		rows := make([]Credential, n)
		for i := range rows {
			rows[i] = Credential{UserID: uint(1 + i%3), Password: fmt.Sprint("secret-", i)}
		}
		must(t, db.CreateInBatches(&rows, 500).Error)
		rec.check(t, "create: encrypted", rec.enc, map[string]int{"Credential.Password": n})
		rec.check(t, "create: cache", rec.cache, map[string]int{"miss": 9, "create": 3, "load": 6}) // one transaction: its DEKs are cached once it commits
		var got []Credential
		must(t, db.Find(&got).Error) // warms the cache
		rec.reset()
		before := envelope.PipelinedForTest(p)
		got = nil
		must(t, db.Find(&got).Error)
		if len(got) != n {
			t.Fatalf("read %d rows, want %d", len(got), n)
		}
		rec.check(t, "warm read: decrypted", rec.dec, map[string]int{"Credential.Password": n})
		rec.check(t, "warm read: cache", rec.cache, map[string]int{"hit": 3})
		t.Logf("pipelined %d of %d values", envelope.PipelinedForTest(p)-before, n)
		rec.noLeak(t, "secret")
	})
}
