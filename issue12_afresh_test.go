package envelope_test

import (
	"errors"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"gorm.io/gorm"
)

// After Shred, deleting the owner's profile through GORM starts the owner
// afresh in this process at once: the next write creates a new DEK.
func TestIssue12ShredThenStartAfresh(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		p := setup(t, db, keys)
		shredAndRead := func(owner uint) uint {
			t.Helper()
			c := Credential{UserID: owner, Password: "old"}
			must(t, db.Create(&c).Error)
			must(t, envelope.Shred(db, owner))
			// The read caches the shredded state.
			if err := db.Where("user_id = ?", owner).First(&Credential{}).Error; !errors.Is(err, envelope.ErrShredded) {
				t.Fatalf("owner %d: read after shred: %v", owner, err)
			}
			return c.ID
		}
		writeRead := func(db *gorm.DB, owner uint, secret string) {
			t.Helper()
			c := Credential{UserID: owner, Password: secret}
			if err := db.Create(&c).Error; err != nil {
				t.Fatalf("owner %d: write after the profile was deleted: %v", owner, err)
			}
			var got Credential
			must(t, db.First(&got, c.ID).Error)
			if got.Password != secret {
				t.Fatalf("owner %d: read back %q", owner, got.Password)
			}
		}

		// A delete by a raw condition.
		oldID := shredAndRead(5)
		must(t, db.Where("user_id = ?", 5).Delete(&Profile{}).Error)
		writeRead(db, 5, "new-5")
		// The old value was under the shredded DEK: it does not open under
		// the new one.
		var old Credential
		if err := db.First(&old, oldID).Error; !errors.Is(err, envelope.ErrDecrypt) || old.Password != "" {
			t.Fatalf("old value of a restarted owner: %v, %q", err, old.Password)
		}

		// A delete of the loaded profile (by primary key).
		shredAndRead(6)
		var prof Profile
		must(t, db.Where("user_id = ?", 6).First(&prof).Error)
		must(t, db.Delete(&prof).Error)
		writeRead(db, 6, "new-6")

		// A delete by a struct condition on the owner evicts that owner only.
		shredAndRead(10)
		before := p.CacheStats().Entries
		must(t, db.Where(&Profile{UserID: 10}).Delete(&Profile{}).Error)
		if after := p.CacheStats().Entries; after != before-1 {
			t.Errorf("cache entries %d -> %d, want one evicted", before, after)
		}
		writeRead(db, 10, "new-10")

		// A map condition: a list of owners, and an owner given as text.
		shredAndRead(11)
		shredAndRead(12)
		must(t, db.Where(map[string]any{"user_id": []uint{11, 13}}).Delete(&Profile{}).Error)
		writeRead(db, 11, "new-11")
		must(t, db.Where(map[string]any{"user_id": "12"}).Delete(&Profile{}).Error)
		writeRead(db, 12, "new-12")

		// Inside the caller's transaction, the later writes of the
		// transaction and of everyone after its commit get the new DEK.
		shredAndRead(7)
		must(t, db.Transaction(func(tx *gorm.DB) error {
			if err := tx.Delete(&Profile{}, "user_id = ?", 7).Error; err != nil {
				return err
			}
			writeRead(tx, 7, "in-tx-7")
			return nil
		}))
		writeRead(db, 7, "after-tx-7")

		// A delete rolled back leaves the owner shredded.
		shredAndRead(8)
		rollback := errors.New("rollback")
		err := db.Transaction(func(tx *gorm.DB) error {
			must(t, tx.Delete(&Profile{}, "user_id = ?", 8).Error)
			return rollback
		})
		if !errors.Is(err, rollback) {
			t.Fatal(err)
		}
		if err := db.Create(&Credential{UserID: 8, Password: "x"}).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("write after a rolled back profile delete: %v, want ErrShredded", err)
		}

		// Not only shredded owners: a live DEK whose profile row was deleted
		// must not go on being used, or what is written under it could
		// never be read by anyone else.
		must(t, db.Create(&Credential{UserID: 9, Password: "live"}).Error) // caches the DEK
		must(t, db.Where("user_id = ?", 9).Delete(&Profile{}).Error)
		c := Credential{UserID: 9, Password: "after-delete"}
		must(t, db.Create(&c).Error)
		var n int64
		must(t, db.Model(&Profile{}).Where("user_id = ? AND encrypted_dek IS NOT NULL", 9).Count(&n).Error)
		if n != 1 {
			t.Fatalf("owner 9: %d profiles with a DEK after the write, want 1", n)
		}
		fresh := testdb.Reopen(t, db)
		must(t, fresh.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})))
		var got Credential
		must(t, fresh.First(&got, c.ID).Error)
		if got.Password != "after-delete" {
			t.Fatalf("another process read %q", got.Password)
		}
	})
}

// SoftProfile is a profile model with soft delete.
type SoftProfile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
	DeletedAt    gorm.DeletedAt
}

// With a soft-delete Profile model, Delete keeps the row and the DEK (or
// tombstone) in it, and the plugin goes on using that row: a soft delete is
// reversible, so it changes nothing about the owner's keys. A live owner's
// data stays readable and writable (and still is once the row is
// restored); a shredded owner stays shredded, in this process as in any
// other. Starting a shredded owner afresh takes Unscoped().Delete, which
// removes the row; the next write then creates a new DEK.
func TestIssue12SoftDeleteProfile(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		must(t, db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &SoftProfile{}})))
		must(t, db.AutoMigrate(&SoftProfile{}, &Credential{}))
		// Another process, without a cache: it sees what is stored.
		other := testdb.Reopen(t, db)
		must(t, other.Use(envelope.New(envelope.Config{Keys: keys, Profile: &SoftProfile{}, CacheSize: -1})))

		// A live owner.
		must(t, db.Create(&Credential{UserID: 1, Password: "live"}).Error)
		must(t, db.Where("user_id = ?", 1).Delete(&SoftProfile{}).Error)
		var raw int64
		must(t, db.Unscoped().Model(&SoftProfile{}).Where("user_id = ? AND encrypted_dek IS NOT NULL", 1).Count(&raw).Error)
		if raw != 1 {
			t.Fatalf("soft delete: %d rows with a DEK, want the row kept", raw)
		}
		must(t, db.Create(&Credential{UserID: 1, Password: "live-2"}).Error)
		for _, h := range []*gorm.DB{db, other} {
			var got []Credential
			must(t, h.Where("user_id = 1").Order("id").Find(&got).Error)
			if len(got) != 2 || got[0].Password != "live" || got[1].Password != "live-2" {
				t.Fatalf("after a soft delete: %+v", got)
			}
		}
		must(t, db.Unscoped().Model(&SoftProfile{}).Where("user_id = ?", 1).Update("deleted_at", nil).Error)
		var back Credential
		must(t, other.Where("user_id = 1").First(&back).Error)
		if back.Password != "live" {
			t.Fatalf("after restoring the profile: %q", back.Password)
		}

		// A shredded owner.
		must(t, db.Create(&Credential{UserID: 2, Password: "old"}).Error)
		must(t, envelope.Shred(db, 2))
		if err := db.Where("user_id = 2").First(&Credential{}).Error; !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("read after shred: %v", err)
		}
		must(t, db.Where("user_id = ?", 2).Delete(&SoftProfile{}).Error)
		for _, h := range []*gorm.DB{db, other} {
			if err := h.Create(&Credential{UserID: 2, Password: "x"}).Error; !errors.Is(err, envelope.ErrShredded) {
				t.Fatalf("write after a soft delete of a shredded profile: %v, want ErrShredded", err)
			}
		}
		must(t, db.Unscoped().Where("user_id = ?", 2).Delete(&SoftProfile{}).Error)
		c := Credential{UserID: 2, Password: "fresh"}
		must(t, db.Create(&c).Error)
		var got Credential
		must(t, other.First(&got, c.ID).Error)
		if got.Password != "fresh" {
			t.Fatalf("after Unscoped().Delete: %q", got.Password)
		}
	})
}
