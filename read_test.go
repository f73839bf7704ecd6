package envelope_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/internal/token"
	"gorm.io/gorm"
)

// A cold Find over 30 owners looks their DEKs up with exactly one query on
// the profiles table, made through the statement's session (so the GORM
// logger shows it); a warm Find makes none.
func TestColdFindOneProfileQuery(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		for u := 1; u <= 30; u++ {
			must(t, db.Create(&[]Credential{{UserID: uint(u), Password: fmt.Sprint("p", u), APIKey: ptr(fmt.Sprint("k", u))}, {UserID: uint(u), Password: "x"}}).Error)
		}
		log := newSQLLog()
		cold := testdb.Reopen(t, db, testdb.Options{Logger: log})
		if err := cold.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})); err != nil {
			t.Fatal(err)
		}
		log.Reset()
		var got []Credential
		must(t, cold.Order("id").Find(&got).Error)
		if n := log.count("profiles"); n != 1 {
			t.Fatalf("cold Find made %d profiles queries, want 1:\n%s", n, log)
		}
		if len(got) != 60 || got[0].Password != "p1" || *got[58].APIKey != "k30" {
			t.Fatalf("decrypted wrong: %d rows, %q", len(got), got[0].Password)
		}
		log.Reset()
		var again []*Credential
		must(t, cold.Find(&again).Error)
		if n := log.count("profiles"); n != 0 {
			t.Fatalf("warm Find made %d profiles queries, want 0", n)
		}
		if again[1].Password != "x" {
			t.Fatalf("warm decrypt: %q", again[1].Password)
		}
	})
}

// Data written by Python's cryptography (TOM Toolkit's layout) reads back;
// tampered tokens and another owner's token fail with ErrDecrypt and leave
// the field at its zero value.
func TestReadVectors(t *testing.T) {
	v := loadVectors(t)
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys, err := dek.ParseKeyring(v.MasterKey)
		must(t, err)
		setup(t, db, keys)
		raw := db.Session(&gorm.Session{NewDB: true})
		for _, o := range v.Owners {
			must(t, raw.Exec("INSERT INTO profiles (user_id, nickname, encrypted_dek) VALUES (?, '', ?)", o.Owner, []byte(o.EncryptedDEK)).Error)
			for i, f := range o.Fields {
				must(t, raw.Exec("INSERT INTO credentials (user_id, facility, password) VALUES (?, ?, ?)", o.Owner, fmt.Sprint("v", i), f.Token).Error)
			}
		}
		for _, o := range v.Owners {
			var got []Credential
			must(t, db.Where("user_id = ?", o.Owner).Order("id").Find(&got).Error)
			for i, f := range o.Fields {
				if got[i].Password != f.Plaintext {
					t.Errorf("owner %d field %d: got %q, want %q", o.Owner, i, got[i].Password, f.Plaintext)
				}
			}
		}
		for name, tok := range map[string]string{"tampered": v.Tampered, "cross-owner": v.CrossOwner, "not-a-token": "plain text"} {
			must(t, raw.Exec("INSERT INTO credentials (user_id, facility, password) VALUES (1, ?, ?)", name, tok).Error)
			var c Credential
			err := db.Where("facility = ?", name).First(&c).Error
			if !errors.Is(err, envelope.ErrDecrypt) {
				t.Errorf("%s: err = %v, want ErrDecrypt", name, err)
			}
			var fe *envelope.FieldError
			if !errors.As(err, &fe) || fe.Model != "Credential" || fe.Field != "Password" || fe.Owner != int64(1) {
				t.Errorf("%s: error does not name model, field and owner: %v", name, err)
			}
			if c.Password != "" {
				t.Errorf("%s: field holds %q, want zero value", name, c.Password)
			}
			if strings.Contains(err.Error(), tok) {
				t.Errorf("%s: error holds the stored value", name)
			}
		}
	})
}

// Preload and Joins results are decrypted, nested structs included.
type Account struct {
	ID          uint
	UserID      uint         `envelope:"owner"`
	Email       string       `gorm:"serializer:envelope"`
	Credentials []Credential `gorm:"foreignKey:UserID;references:UserID"`
}

type Order struct {
	ID        uint
	UserID    uint   `envelope:"owner"`
	Secret    string `gorm:"serializer:envelope"`
	AccountID uint
	Account   Account
}

func TestPreloadAndJoins(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&Account{}, &Order{}))
		for u := uint(1); u <= 3; u++ {
			a := &Account{UserID: u, Email: fmt.Sprint("user", u, "@example.org")}
			must(t, db.Create(a).Error)
			must(t, db.Create(&Credential{UserID: u, Password: fmt.Sprint("pw", u)}).Error)
			must(t, db.Create(&Order{UserID: u, Secret: fmt.Sprint("order", u), AccountID: a.ID}).Error)
		}
		var accounts []Account
		must(t, db.Preload("Credentials").Order("id").Find(&accounts).Error)
		for i, a := range accounts {
			if a.Email != fmt.Sprint("user", i+1, "@example.org") || len(a.Credentials) != 1 || a.Credentials[0].Password != fmt.Sprint("pw", i+1) {
				t.Errorf("preload %d: %+v", i, a)
			}
		}
		var orders []Order
		must(t, db.Joins("Account").Order("orders.id").Find(&orders).Error)
		for i, o := range orders {
			if o.Secret != fmt.Sprint("order", i+1) || o.Account.Email != fmt.Sprint("user", i+1, "@example.org") {
				t.Errorf("joins %d: %q %q", i, o.Secret, o.Account.Email)
			}
		}
		var one Order
		must(t, db.Joins("Account").Preload("Account.Credentials").First(&one).Error)
		if one.Account.Email != "user1@example.org" || one.Account.Credentials[0].Password != "pw1" {
			t.Errorf("joins+preload: %+v", one)
		}
	})
}

// Two databases with different keyrings in one process each read their own data.
func TestTwoDatabasesTwoKeyrings(t *testing.T) {
	a := testdb.Open(t, testdb.SQLite)
	b := testdb.Open(t, testdb.SQLite)
	setup(t, a, newKeys(t))
	setup(t, b, newKeys(t))
	must(t, a.Create(&Credential{UserID: 1, Password: "in-a"}).Error)
	must(t, b.Create(&Credential{UserID: 1, Password: "in-b"}).Error)
	var ca, cb Credential
	must(t, a.First(&ca).Error)
	must(t, b.First(&cb).Error)
	if ca.Password != "in-a" || cb.Password != "in-b" {
		t.Fatalf("got %q and %q", ca.Password, cb.Password)
	}
}

// Without a key the plugin registers, warns once, refuses encrypted reads
// and writes with ErrNoKey, and leaves plain models alone.
func TestNoKey(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, testdb.Reopen(t, db), keys)
		must(t, testdb.Reopen(t, db).Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})))
		writer := testdb.Reopen(t, db)
		must(t, writer.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})))
		must(t, writer.Create(&Credential{UserID: 1, Password: "written-with-key"}).Error)

		capture := &slogCapture{}
		nokey := testdb.Reopen(t, db)
		if err := nokey.Use(envelope.New(envelope.Config{Profile: &Profile{}, Logger: slogLogger(capture)})); err != nil {
			t.Fatalf("Use without key: %v", err)
		}
		lines := capture.Lines()
		if len(lines) != 1 || !strings.Contains(lines[0], "DEK_ENCRYPTION_KEY") || !strings.Contains(lines[0], "WARN") {
			t.Fatalf("want one warning naming DEK_ENCRYPTION_KEY, got %q", lines)
		}
		err := nokey.Create(&Credential{UserID: 2, Password: "no-key"}).Error
		if !errors.Is(err, envelope.ErrNoKey) {
			t.Fatalf("write: %v, want ErrNoKey", err)
		}
		var n int64
		must(t, nokey.Model(&Credential{}).Where("user_id = 2").Count(&n).Error)
		if n != 0 {
			t.Fatalf("a refused write stored %d rows", n)
		}
		var c Credential
		err = nokey.First(&c).Error
		if !errors.Is(err, envelope.ErrNoKey) || c.Password != "" {
			t.Fatalf("read: %v, %q; want ErrNoKey and zero value", err, c.Password)
		}
		must(t, nokey.Create(&Note{Text: "plain models work"}).Error)
		var note Note
		must(t, nokey.First(&note).Error)
		must(t, nokey.Create(&Profile{UserID: 99}).Error)
	})
}

// A keyring that opens none of the stored DEKs is refused at db.Use.
func TestWrongKeyRefusedAtInitialize(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.Create(&Credential{UserID: 1, Password: "x"}).Error)
		other := testdb.Reopen(t, db)
		err := other.Use(envelope.New(envelope.Config{Keys: newKeys(t), Profile: &Profile{}}))
		if !errors.Is(err, envelope.ErrDecrypt) || strings.Contains(err.Error(), "\n") {
			t.Fatalf("Use with wrong key: %v, want one-line ErrDecrypt", err)
		}
	})
}

// A ciphertext read by a path without callbacks and saved again is stored
// unchanged, never encrypted twice.
func TestCiphertextSavedUnchanged(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		c := &Credential{UserID: 3, Password: "round-trip"}
		must(t, db.Create(c).Error)
		stored, _ := rawColumn(t, db, "credentials", "password", c.ID)
		var viaRaw Credential
		must(t, db.Raw("SELECT * FROM credentials WHERE id = ?", c.ID).Scan(&viaRaw).Error)
		if viaRaw.Password != stored {
			t.Fatalf("Raw().Scan returned %q, want the stored token", viaRaw.Password)
		}
		must(t, db.Save(&viaRaw).Error)
		again, _ := rawColumn(t, db, "credentials", "password", c.ID)
		if again != stored {
			t.Fatalf("token changed on save: encrypted twice")
		}
		var got Credential
		must(t, db.First(&got, c.ID).Error)
		if got.Password != "round-trip" {
			t.Fatalf("read %q", got.Password)
		}
	})
}

// Unsupported field types and bad Profile models give clear errors.
type BadField struct {
	ID     uint
	UserID uint `envelope:"owner"`
	Age    int  `gorm:"serializer:envelope"`
}

type NoOwnerModel struct {
	ID     uint
	Secret string `gorm:"serializer:envelope"`
}

type ProfileNotUnique struct {
	ID           uint
	UserID       uint   `envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

func TestModelValidation(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, newKeys(t))
	must(t, db.AutoMigrate(&BadField{}, &NoOwnerModel{}))
	err := db.Create(&BadField{UserID: 1, Age: 3}).Error
	if err == nil || !strings.Contains(err.Error(), "Age") || !strings.Contains(err.Error(), "int") {
		t.Errorf("int field: %v", err)
	}
	err = db.Find(&[]BadField{}).Error
	if err == nil {
		t.Errorf("query on a model with an int field succeeded")
	}
	err = db.Create(&NoOwnerModel{Secret: "s"}).Error
	if !errors.Is(err, envelope.ErrNoOwner) || !strings.Contains(err.Error(), "NoOwnerModel") {
		t.Errorf("no owner field: %v", err)
	}
	for name, cfg := range map[string]envelope.Config{
		"nil profile": {},
		"not unique":  {Profile: &ProfileNotUnique{}},
		"no dek":      {Profile: &Note{}},
	} {
		err := testdb.Open(t, testdb.SQLite).Use(envelope.New(cfg))
		if err == nil || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: Use = %v, want a one-line error", name, err)
		}
	}
}

// Creating a Profile through GORM gives it a DEK.
func TestProfileCreateGetsDEK(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		keys := newKeys(t)
		setup(t, db, keys)
		p := &Profile{UserID: 5}
		must(t, db.Create(p).Error)
		if _, _, _, err := keys.OpenBound(context.Background(), p.EncryptedDEK, profileRow(p.UserID)); err != nil {
			t.Fatalf("profile DEK does not open: %v", err)
		}
		must(t, db.Create(&Credential{UserID: 5, Password: "uses-that-dek"}).Error)
		var stored Profile
		must(t, db.First(&stored, p.ID).Error)
		if string(stored.EncryptedDEK) != string(p.EncryptedDEK) {
			t.Fatal("the first write replaced the profile's DEK")
		}
		var c Credential
		must(t, db.First(&c).Error)
		if c.Password != "uses-that-dek" {
			t.Fatal(c.Password)
		}
	})
}

var _ = token.LooksLike

// Found by the differential test: one row of a shredded owner in a result
// made GORM skip the statement's preloads for every row. The preloads run;
// the error is still returned.
func TestPreloadWithShreddedParent(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		setup(t, db, newKeys(t))
		must(t, db.AutoMigrate(&preloadParent{}))
		a := &preloadParent{Name: "a", Credentials: []Credential{{Password: "a1"}}}
		b := &preloadParent{Name: "b", Credentials: []Credential{{Password: "b1"}}}
		must(t, db.Create(a).Error)
		must(t, db.Create(b).Error)
		must(t, envelope.Shred(db, a.ID))
		var ps []preloadParent
		err := db.Preload("Credentials").Order("id").Find(&ps).Error
		if !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("got %v, want ErrShredded", err)
		}
		if len(ps) != 2 || ps[1].Name != "b" || len(ps[1].Credentials) != 1 || ps[1].Credentials[0].Password != "b1" {
			t.Fatalf("live owner: %+v", ps)
		}
		if ps[0].Name != "" || len(ps[0].Credentials) != 1 || ps[0].Credentials[0].Password != "" {
			t.Fatalf("shredded owner: %+v", ps[0])
		}
		// A parent that reads, with a child that does not.
		must(t, db.AutoMigrate(&UserWithCreds{}))
		c := &UserWithCreds{ID: 10, Name: "c", Credentials: []Credential{{Password: "c1"}}}
		d := &UserWithCreds{ID: 11, Name: "d", Credentials: []Credential{{Password: "d1"}}}
		must(t, db.Create(c).Error)
		must(t, db.Create(d).Error)
		must(t, envelope.Shred(db, c.ID))
		var us []UserWithCreds
		err = db.Preload("Credentials").Where("id IN ?", []uint{c.ID, d.ID}).Order("id").Find(&us).Error
		if !errors.Is(err, envelope.ErrShredded) {
			t.Fatalf("child: got %v, want ErrShredded", err)
		}
		if len(us) != 2 || len(us[1].Credentials) != 1 || us[1].Credentials[0].Password != "d1" || len(us[0].Credentials) != 1 {
			t.Fatalf("child: %+v", us)
		}
	})
}

// preloadParent owns its credentials and is owned by its own id, so that
// a parent row can fail to decrypt.
type preloadParent struct {
	ID          uint         `envelope:"owner"`
	Name        string       `gorm:"serializer:envelope"`
	Credentials []Credential `gorm:"foreignKey:UserID"`
}
