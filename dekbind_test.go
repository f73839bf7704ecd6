package envelope_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"testing"

	"github.com/fernet/fernet-go"
	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/rotate"
)

// Owner-bound DEKs (Config.BindDEKs; docs/format.md, "Owner-bound DEKs").

// profileBinding is the binding of owner's row in the tests' profile table.
func profileBinding(owner uint) dek.Binding {
	return dek.Binding{Table: "profiles", Owner: fmt.Sprint(owner)}
}

// storedDEK returns owner's encrypted_dek as stored, bypassing the plugin.
func storedDEK(t testing.TB, db *gorm.DB, owner uint) []byte {
	t.Helper()
	var enc []byte
	row := db.Session(&gorm.Session{NewDB: true}).Raw("SELECT encrypted_dek FROM profiles WHERE user_id = ?", owner).Row()
	must(t, row.Scan(&enc))
	return enc
}

// storedPassword returns credential id's password column as stored.
func storedPassword(t testing.TB, db *gorm.DB, id uint) string {
	t.Helper()
	v, ok := rawColumn(t, db, "credentials", "password", id)
	if !ok {
		t.Fatalf("credential %d: NULL password", id)
	}
	return v
}

// With BindDEKs, a new owner's DEK is bound to that owner's row: the same
// bytes copied into another owner's profile, with a value of the first
// owner copied into a row of the second, do not open, not even from the
// cache of the instance that just read the first owner.
func TestBindDEKsCopiedDEKDoesNotOpen(t *testing.T) {
	fernetOnly(t) // FormatBound implies BindDEKs; these compare the two DEK layouts
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		keys := newKeys(t)
		setup(t, db, keys, envelope.Config{BindDEKs: true})
		a := Credential{UserID: 1, Facility: "a", Password: "secret of 1"}
		must(t, db.Create(&a).Error)

		encA := storedDEK(t, db, 1)
		d, _, bound, err := keys.OpenBound(ctx, encA, profileBinding(1))
		if err != nil || !bound {
			t.Fatalf("owner 1's DEK: bound %v, %v; want a bound DEK", bound, err)
		}
		if _, _, _, err := keys.OpenBound(ctx, encA, profileBinding(2)); !errors.Is(err, dek.ErrBoundElsewhere) {
			t.Fatalf("owner 1's DEK in owner 2's row: %v, want ErrBoundElsewhere", err)
		}
		if _, _, _, err := keys.OpenBound(ctx, encA, dek.Binding{Table: "other_profiles", Owner: "1"}); !errors.Is(err, dek.ErrBoundElsewhere) {
			t.Fatalf("owner 1's DEK in another table: %v, want ErrBoundElsewhere", err)
		}
		// The value opens with the DEK the row holds.
		k := fernet.Key(d)
		if msg := fernet.VerifyAndDecrypt([]byte(storedPassword(t, db, a.ID)), 0, []*fernet.Key{&k}); string(msg) != "secret of 1" {
			t.Fatalf("owner 1's value does not open with the stored DEK: %q", msg)
		}

		// Warm this instance's caches with owner 1.
		var got Credential
		must(t, db.First(&got, a.ID).Error)
		if got.Password != "secret of 1" {
			t.Fatalf("owner 1: %q", got.Password)
		}

		// Owner 2's profile and value, copied from owner 1 by SQL: the
		// plugin has never seen owner 2.
		raw := db.Session(&gorm.Session{NewDB: true})
		must(t, raw.Exec("INSERT INTO profiles (user_id, nickname, encrypted_dek) VALUES (?, '', ?)", 2, encA).Error)
		must(t, raw.Exec("INSERT INTO credentials (user_id, facility, password) VALUES (?, ?, ?)", 2, "copy", storedPassword(t, db, a.ID)).Error)

		fresh := testdb.Reopen(t, db)
		must(t, fresh.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, BindDEKs: true})))
		for name, h := range map[string]*gorm.DB{"warm instance": db, "another instance": fresh} {
			var c Credential
			err := h.Where("user_id = ?", 2).First(&c).Error
			if !errors.Is(err, envelope.ErrDecrypt) || c.Password != "" {
				t.Fatalf("%s: read of the copy: %v, %q; want ErrDecrypt and the zero value", name, err, c.Password)
			}
			if !errors.Is(err, dek.ErrBoundElsewhere) {
				t.Errorf("%s: read of the copy: %v, want it to say the DEK is bound to another row", name, err)
			}
			// Nor can anything be written under the copied DEK.
			if err := h.Create(&Credential{UserID: 2, Facility: "new", Password: "x"}).Error; !errors.Is(err, envelope.ErrDecrypt) {
				t.Fatalf("%s: write for owner 2: %v, want ErrDecrypt", name, err)
			}
			var c1 Credential
			must(t, h.First(&c1, a.ID).Error)
			if c1.Password != "secret of 1" {
				t.Fatalf("%s: owner 1 after the copy: %q", name, c1.Password)
			}
		}
		var n int64
		must(t, raw.Table("credentials").Where("facility = ?", "new").Count(&n).Error)
		if n != 0 {
			t.Fatal("a value was written for owner 2 under the copied DEK")
		}
	})
}

// Without BindDEKs, new DEKs are in TOM Toolkit's layout: the master key
// decrypts encrypted_dek to the DEK's 44-character text. Such a DEK names
// no row, so a copy opens anywhere: what BindDEKs is for.
func TestBindDEKsOffWritesLegacy(t *testing.T) {
	fernetOnly(t) // FormatBound implies BindDEKs; these compare the two DEK layouts
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		master, err := dek.GenerateKey()
		must(t, err)
		keys, err := dek.ParseKeyring(master)
		must(t, err)
		setup(t, db, keys)
		a := Credential{UserID: 1, Facility: "a", Password: "secret of 1"}
		must(t, db.Create(&a).Error)
		must(t, db.Create(&Profile{UserID: 3}).Error)
		for _, o := range []uint{1, 3} {
			enc := storedDEK(t, db, o)
			mk := fernet.MustDecodeKeys(master)
			text := fernet.VerifyAndDecrypt(enc, 0, mk)
			raw, err := base64.URLEncoding.DecodeString(string(text))
			if len(text) != 44 || err != nil || len(raw) != 32 {
				t.Fatalf("owner %d: the master key's plaintext is %d bytes, want the DEK's 44-character text", o, len(text))
			}
			if _, _, bound, err := keys.OpenBound(ctx, enc, profileBinding(o)); err != nil || bound {
				t.Fatalf("owner %d: bound %v, %v; want a legacy DEK", o, bound, err)
			}
		}

		raw := db.Session(&gorm.Session{NewDB: true})
		must(t, raw.Exec("INSERT INTO profiles (user_id, nickname, encrypted_dek) VALUES (?, '', ?)", 2, storedDEK(t, db, 1)).Error)
		must(t, raw.Exec("INSERT INTO credentials (user_id, facility, password) VALUES (?, ?, ?)", 2, "copy", storedPassword(t, db, a.ID)).Error)
		var c Credential
		must(t, db.Where("user_id = ?", 2).First(&c).Error)
		if c.Password != "secret of 1" {
			t.Fatalf("legacy copy: %q", c.Password)
		}
	})
}

// With BindDEKs, DEKs already stored in TOM Toolkit's layout (the Python
// vectors, and the plugin's own from before BindDEKs) keep opening and
// stay as they are; owners new to the plugin get bound DEKs, and so do
// Profiles created through GORM.
func TestBindDEKsOpensLegacyDEKs(t *testing.T) {
	v := loadVectors(t)
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		keys, err := dek.ParseKeyring(v.MasterKey)
		must(t, err)
		setup(t, db, keys)
		// A legacy DEK written by the plugin before BindDEKs was turned on.
		must(t, db.Create(&Credential{UserID: 500, Facility: "before", Password: "written before"}).Error)
		raw := db.Session(&gorm.Session{NewDB: true})
		for _, o := range v.Owners {
			must(t, raw.Exec("INSERT INTO profiles (user_id, nickname, encrypted_dek) VALUES (?, '', ?)", o.Owner, []byte(o.EncryptedDEK)).Error)
			for i, f := range o.Fields {
				must(t, raw.Exec("INSERT INTO credentials (user_id, facility, password) VALUES (?, ?, ?)", o.Owner, fmt.Sprint("v", i), f.Token).Error)
			}
		}
		legacy500 := storedDEK(t, db, 500)

		bind := testdb.Reopen(t, db)
		must(t, bind.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, BindDEKs: true})))
		for _, o := range v.Owners {
			var got []Credential
			must(t, bind.Where("user_id = ?", o.Owner).Order("id").Find(&got).Error)
			if len(got) != len(o.Fields) {
				t.Fatalf("owner %d: %d values, want %d", o.Owner, len(got), len(o.Fields))
			}
			for i, f := range o.Fields {
				if got[i].Password != f.Plaintext {
					t.Errorf("owner %d field %d: got %q, want %q", o.Owner, i, got[i].Password, f.Plaintext)
				}
			}
			// A write for the owner uses the stored legacy DEK, unchanged.
			must(t, bind.Create(&Credential{UserID: o.Owner, Facility: "after", Password: "written after"}).Error)
			if enc := string(storedDEK(t, db, o.Owner)); enc != o.EncryptedDEK {
				t.Fatalf("owner %d: the legacy DEK was rewritten", o.Owner)
			}
		}
		var c Credential
		must(t, bind.Where("user_id = ? AND facility = ?", 500, "before").First(&c).Error)
		if c.Password != "written before" {
			t.Fatalf("owner 500: %q", c.Password)
		}
		if string(storedDEK(t, db, 500)) != string(legacy500) {
			t.Fatal("owner 500: the legacy DEK was rewritten")
		}
		var after []Credential
		must(t, db.Where("facility = ?", "after").Find(&after).Error)
		if len(after) != len(v.Owners) {
			t.Fatalf("the instance without BindDEKs reads %d values written with it, want %d", len(after), len(v.Owners))
		}

		// New owners get bound DEKs, on first write and on Profile creation.
		must(t, bind.Create(&Credential{UserID: 600, Password: "new"}).Error)
		must(t, bind.Create(&Profile{UserID: 601}).Error)
		for _, o := range []uint{600, 601} {
			if _, _, bound, err := keys.OpenBound(ctx, storedDEK(t, db, o), profileBinding(o)); err != nil || !bound {
				t.Fatalf("owner %d: bound %v, %v; want a bound DEK", o, bound, err)
			}
		}
		must(t, bind.Create(&Credential{UserID: 601, Password: "profile first"}).Error)
		var c601 Credential
		must(t, db.Where("user_id = ?", 601).First(&c601).Error)
		if c601.Password != "profile first" {
			t.Fatalf("owner 601 read by an instance without BindDEKs: %q", c601.Password)
		}
	})
}

// A rotation keeps bound DEKs bound and legacy ones legacy; with BindDEKs
// it binds the legacy ones. Every value still reads afterwards, and a
// bound DEK copied into another row is reported and left alone.
func TestBindDEKsRotation(t *testing.T) {
	fernetOnly(t) // FormatBound implies BindDEKs; these compare the two DEK layouts
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		ctx := context.Background()
		k0, err := dek.GenerateKey()
		must(t, err)
		k1, err := dek.GenerateKey()
		must(t, err)
		old, err := dek.ParseKeyring(k0)
		must(t, err)
		setup(t, db, old)
		for o := uint(1); o <= 4; o++ { // legacy
			must(t, db.Create(&Credential{UserID: o, Facility: fmt.Sprint("pw ", o), Password: fmt.Sprint("pw ", o)}).Error)
		}
		bind := testdb.Reopen(t, db)
		must(t, bind.Use(envelope.New(envelope.Config{Keys: old, Profile: &Profile{}, BindDEKs: true})))
		for o := uint(5); o <= 7; o++ { // bound
			must(t, bind.Create(&Credential{UserID: o, Facility: fmt.Sprint("pw ", o), Password: fmt.Sprint("pw ", o)}).Error)
		}
		layouts := func(keys *dek.Keyring) (bound, legacy int) {
			t.Helper()
			for o := uint(1); o <= 7; o++ {
				_, idx, b, err := keys.OpenBound(ctx, storedDEK(t, db, o), profileBinding(o))
				if err != nil || idx != 0 {
					t.Fatalf("owner %d: key %d, %v; want the primary", o, idx, err)
				}
				if b {
					bound++
				} else {
					legacy++
				}
			}
			return bound, legacy
		}
		readAll := func(keys *dek.Keyring) {
			t.Helper()
			h := testdb.Reopen(t, db)
			must(t, h.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})))
			var cs []Credential
			must(t, h.Order("id").Find(&cs).Error)
			if len(cs) != 7 {
				t.Fatalf("%d credentials, want 7", len(cs))
			}
			for _, c := range cs {
				if c.Password != c.Facility {
					t.Fatalf("owner %d: %q, want %q", c.UserID, c.Password, c.Facility)
				}
			}
		}

		keys, err := dek.ParseKeyring(k1, k0)
		must(t, err)
		res, err := rotate.Run(ctx, db, rotate.Options{Keys: keys, Profile: &Profile{}})
		if err != nil || res.Rotated != 7 || res.Upgraded != 0 {
			t.Fatalf("rotate: %+v, %v", res, err)
		}
		if b, l := layouts(keys); b != 3 || l != 4 {
			t.Fatalf("after rotating: %d bound, %d legacy; want 3 and 4", b, l)
		}
		readAll(keys)

		res, err = rotate.Run(ctx, db, rotate.Options{Keys: keys, Profile: &Profile{}, BindDEKs: true})
		if err != nil || res.Rotated != 0 || res.AlreadyCurrent != 7 || res.Upgraded != 4 {
			t.Fatalf("rotate with BindDEKs: %+v, %v", res, err)
		}
		if b, l := layouts(keys); b != 7 || l != 0 {
			t.Fatalf("after upgrading: %d bound, %d legacy; want 7 and 0", b, l)
		}
		readAll(keys)
		st, err := rotate.Status(ctx, db, rotate.Options{Keys: keys, Profile: &Profile{}})
		if err != nil || st.Legacy != 0 || st.Keys[0].Count != 7 {
			t.Fatalf("status: %+v, %v", st, err)
		}

		// Owner 7's bound DEK copied into owner 8's new row.
		copied := storedDEK(t, db, 7)
		must(t, db.Session(&gorm.Session{NewDB: true}).Exec("INSERT INTO profiles (user_id, nickname, encrypted_dek) VALUES (?, '', ?)", 8, copied).Error)
		k2, err := dek.GenerateKey()
		must(t, err)
		keys2, err := dek.ParseKeyring(k2, k1)
		must(t, err)
		res, err = rotate.Run(ctx, db, rotate.Options{Keys: keys2, Profile: &Profile{}, BindDEKs: true})
		var fe *rotate.FailedError
		if !errors.As(err, &fe) || fe.Count != 1 || res.Failed != 1 || res.Rotated != 7 || res.Failures[0].Owner != "8" {
			t.Fatalf("rotate over a copied DEK: %+v, %v", res, err)
		}
		if string(storedDEK(t, db, 8)) != string(copied) {
			t.Fatal("the copied DEK was rewritten")
		}
		readAll(keys2)
	})
}
