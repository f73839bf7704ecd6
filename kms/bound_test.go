package kms_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/rotate"
)

// A KMS keeper takes no associated data: the binding of a bound DEK is
// inside what it encrypts, and holds there as with a Fernet master key.
func TestBindDEKsUnderKMS(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		keeper, _ := openLocal(t)
		keys, err := dek.NewKeyring(keeper)
		must(t, err)
		bind := func(h *gorm.DB, keys *dek.Keyring) {
			t.Helper()
			must(t, h.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, BindDEKs: true})))
		}
		bind(db, keys)
		must(t, db.AutoMigrate(&Profile{}, &Credential{}))
		c := Credential{UserID: 1, Facility: "pw of 1", Password: "pw of 1"}
		must(t, db.Create(&c).Error)

		raw := db.Session(&gorm.Session{NewDB: true})
		stored := func(owner uint) []byte {
			t.Helper()
			var enc []byte
			must(t, raw.Raw("SELECT encrypted_dek FROM profiles WHERE user_id = ?", owner).Row().Scan(&enc))
			return enc
		}
		enc := stored(1)
		pt, err := keeper.Decrypt(ctx, enc)
		must(t, err)
		if !bytes.HasPrefix(pt, []byte("\x00DEK\x01")) || !bytes.Contains(pt, []byte("profiles")) {
			t.Fatal("the keeper's plaintext is not a bound DEK naming the profile table")
		}
		clear(pt)
		if _, _, bound, err := keys.OpenBound(ctx, enc, dek.Binding{Table: "profiles", Owner: "1"}); err != nil || !bound {
			t.Fatalf("owner 1: bound %v, %v", bound, err)
		}

		// Copied into owner 2's row, with owner 1's value: refused, by the
		// instance that just read owner 1 too.
		var got Credential
		must(t, db.First(&got, c.ID).Error)
		var token string
		must(t, raw.Raw("SELECT password FROM credentials WHERE id = ?", c.ID).Row().Scan(&token))
		must(t, raw.Exec("INSERT INTO profiles (user_id, encrypted_dek) VALUES (?, ?)", 2, enc).Error)
		must(t, raw.Exec("INSERT INTO credentials (user_id, facility, password) VALUES (?, ?, ?)", 2, "copy", token).Error)
		var copied Credential
		err = db.Where("user_id = ?", 2).First(&copied).Error
		if !errors.Is(err, envelope.ErrDecrypt) || !errors.Is(err, dek.ErrBoundElsewhere) || copied.Password != "" {
			t.Fatalf("read of the copy: %v, %q; want ErrDecrypt (bound elsewhere) and the zero value", err, copied.Password)
		}

		// An instance on the same keeper starts (its check of the keys
		// accepts bound DEKs); one on another keeper is refused.
		bind(testdb.Reopen(t, db), keys)
		other, _ := openLocal(t)
		otherKeys, err := dek.NewKeyring(other)
		must(t, err)
		if err := testdb.Reopen(t, db).Use(envelope.New(envelope.Config{Keys: otherKeys, Profile: &Profile{}, BindDEKs: true})); !errors.Is(err, envelope.ErrDecrypt) {
			t.Fatalf("instance on another keeper: %v, want ErrDecrypt", err)
		}

		// Rotating to another keeper keeps owner 1's DEK bound, and fails
		// the copy without rewriting it.
		rotated, err := dek.NewKeyring(other, keeper)
		must(t, err)
		res, err := rotate.Run(ctx, db, rotate.Options{Keys: rotated, Profile: &Profile{}, BindDEKs: true})
		var fe *rotate.FailedError
		if !errors.As(err, &fe) || res.Rotated != 1 || res.Failed != 1 || res.Failures[0].Owner != "2" {
			t.Fatalf("rotate: %+v, %v", res, err)
		}
		if !bytes.Equal(stored(2), enc) {
			t.Fatal("the copied DEK was rewritten")
		}
		if _, idx, bound, err := rotated.OpenBound(ctx, stored(1), dek.Binding{Table: "profiles", Owner: "1"}); err != nil || !bound || idx != 0 {
			t.Fatalf("owner 1 after rotating: key %d, bound %v, %v", idx, bound, err)
		}
		after := testdb.Reopen(t, db)
		bind(after, otherKeys)
		var again Credential
		must(t, after.First(&again, c.ID).Error)
		if again.Password != "pw of 1" {
			t.Fatalf("owner 1 after rotating: %q", again.Password)
		}
	})
}
