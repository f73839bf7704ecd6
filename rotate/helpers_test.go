package rotate

import (
	"context"
	"fmt"
	"testing"

	"github.com/fernet/fernet-go"
	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
)

// Profile is the contract's profile model.
type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

// Note is app data encrypted with its owner's DEK; rotation must never
// touch it.
type Note struct {
	ID     uint
	UserID uint
	Body   []byte // Fernet token under the owner's DEK
}

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

// world is a seeded database: profiles, each with a note, and the DEKs.
type world struct {
	db   *gorm.DB
	deks map[uint]dek.DEK // by owner
}

func newWorld(t testing.TB, db *gorm.DB) *world {
	t.Helper()
	if err := db.AutoMigrate(&Profile{}, &Note{}); err != nil {
		t.Fatal(err)
	}
	return &world{db: db, deks: map[uint]dek.DEK{}}
}

// seed adds n profiles, owners from first on, with DEKs sealed by keys and
// one note each.
func (w *world) seed(t testing.TB, keys *dek.Keyring, first, n int) {
	t.Helper()
	ctx := context.Background()
	profiles := make([]Profile, 0, n)
	notes := make([]Note, 0, n)
	for i := 0; i < n; i++ {
		owner := uint(first + i)
		d, err := dek.NewDEK()
		if err != nil {
			t.Fatal(err)
		}
		sealed, err := keys.Seal(ctx, d)
		if err != nil {
			t.Fatal(err)
		}
		k := fernet.Key(d)
		body, err := fernet.EncryptAndSign([]byte(fmt.Sprintf("note of %d", owner)), &k)
		if err != nil {
			t.Fatal(err)
		}
		w.deks[owner] = d
		profiles = append(profiles, Profile{UserID: owner, EncryptedDEK: sealed})
		notes = append(notes, Note{UserID: owner, Body: body})
	}
	if err := w.db.CreateInBatches(profiles, 1000).Error; err != nil {
		t.Fatal(err)
	}
	if err := w.db.CreateInBatches(notes, 1000).Error; err != nil {
		t.Fatal(err)
	}
}

// setDEK stores raw as owner's DEK column.
func (w *world) setDEK(t testing.TB, owner uint, raw []byte) {
	t.Helper()
	if err := w.db.Model(&Profile{}).Where("user_id = ?", owner).Update("encrypted_dek", raw).Error; err != nil {
		t.Fatal(err)
	}
}

func (w *world) dekColumn(t testing.TB, owner uint) []byte {
	t.Helper()
	var p Profile
	if err := w.db.Where("user_id = ?", owner).First(&p).Error; err != nil {
		t.Fatal(err)
	}
	return p.EncryptedDEK
}

// notes returns every note's stored ciphertext by id.
func (w *world) notes(t testing.TB) map[uint][]byte {
	t.Helper()
	var ns []Note
	if err := w.db.Order("id").Find(&ns).Error; err != nil {
		t.Fatal(err)
	}
	m := map[uint][]byte{}
	for _, n := range ns {
		m[n.ID] = n.Body
	}
	return m
}

// check asserts that every seeded DEK (except those in skip) opens under
// keys to the DEK it was seeded with, under key index wantIdx (-1: any).
func (w *world) check(t testing.TB, keys *dek.Keyring, wantIdx int, skip ...uint) {
	t.Helper()
	var ps []Profile
	if err := w.db.Order("id").Find(&ps).Error; err != nil {
		t.Fatal(err)
	}
	skipped := map[uint]bool{}
	for _, o := range skip {
		skipped[o] = true
	}
	bad := 0
	for _, p := range ps {
		want, ok := w.deks[p.UserID]
		if !ok || skipped[p.UserID] {
			continue
		}
		d, idx, err := keys.Open(context.Background(), p.EncryptedDEK)
		switch {
		case err != nil:
			t.Errorf("owner %d: %v", p.UserID, err)
		case d != want:
			t.Errorf("owner %d: DEK changed", p.UserID)
		case wantIdx >= 0 && idx != wantIdx:
			t.Errorf("owner %d: opened under key %d, want %d", p.UserID, idx, wantIdx)
		default:
			continue
		}
		if bad++; bad > 5 {
			t.Fatal("too many errors")
		}
	}
}
