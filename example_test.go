package envelope_test

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

func ExampleNew() {
	// The app's profile model: one row per owner, holding that owner's
	// DEK encrypted under the master key.
	type Profile struct {
		ID           uint
		UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
		EncryptedDEK []byte `envelope:"dek"`
	}
	// A model with encrypted fields names its owner with the same tag.
	type Credential struct {
		ID       uint
		UserID   uint `envelope:"owner"`
		Facility string
		Password string  `gorm:"serializer:envelope"`
		APIKey   *string `gorm:"serializer:envelope"` // nil <-> NULL
		Blob     []byte  `gorm:"serializer:envelope"`
	}

	// A real app reads its master key with dek.KeyringFromEnv.
	key, err := dek.GenerateKey()
	if err != nil {
		panic(err)
	}
	keys, err := dek.ParseKeyring(key)
	if err != nil {
		panic(err)
	}

	db, err := gorm.Open(sqlite.Open("file:/example-new?vfs=memdb"), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		panic(err)
	}
	sqlDB, _ := db.DB()
	defer sqlDB.Close()

	if err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})); err != nil {
		panic(err)
	}
	if err := db.AutoMigrate(&Profile{}, &Credential{}); err != nil {
		panic(err)
	}

	apiKey := "lco-api-key"
	c := Credential{UserID: 1, Facility: "lco", Password: "hunter2", APIKey: &apiKey}
	if err := db.Create(&c).Error; err != nil {
		panic(err)
	}

	// Raw SQL runs no GORM callbacks: it sees what the database holds.
	var stored string
	if err := db.Raw("SELECT password FROM credentials WHERE id = ?", c.ID).Row().Scan(&stored); err != nil {
		panic(err)
	}
	fmt.Println("stored as a Fernet token:", strings.HasPrefix(stored, "gAAAAA"), stored != "hunter2")

	var got Credential
	if err := db.First(&got, c.ID).Error; err != nil {
		panic(err)
	}
	fmt.Println("read through GORM:", got.Password, *got.APIKey, got.Blob == nil)
	// Output:
	// stored as a Fernet token: true true
	// read through GORM: hunter2 lco-api-key true
}

// Member and Login are the models of the examples below.
type Member struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

type Login struct {
	ID       uint
	UserID   uint `envelope:"owner"`
	Site     string
	Password string `gorm:"serializer:envelope"`
}

// openExample opens an empty in-memory database named name, registers the
// plugin with keys (nil for none) and migrates Member and Login. Call
// done when finished.
func openExample(name string, keys *dek.Keyring) (db *gorm.DB, done func()) {
	db, err := gorm.Open(sqlite.Open("file:/example-"+name+"?vfs=memdb"), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		panic(err)
	}
	sqlDB, _ := db.DB()
	quiet := slog.New(slog.DiscardHandler)
	if err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Member{}, Logger: quiet})); err != nil {
		panic(err)
	}
	if err := db.AutoMigrate(&Member{}, &Login{}); err != nil {
		panic(err)
	}
	return db, func() { sqlDB.Close() }
}

func exampleKeys() *dek.Keyring {
	key, err := dek.GenerateKey()
	if err != nil {
		panic(err)
	}
	keys, err := dek.ParseKeyring(key)
	if err != nil {
		panic(err)
	}
	return keys
}

// Without a master key the plugin still registers; every read or write of
// an encrypted field fails with ErrNoKey and writes nothing.
func ExampleConfig_noKey() {
	db, done := openExample("nokey", nil)
	defer done()

	err := db.Create(&Login{UserID: 1, Site: "lco", Password: "hunter2"}).Error
	fmt.Println(errors.Is(err, envelope.ErrNoKey))

	var n int64
	db.Model(&Login{}).Count(&n)
	fmt.Println("rows written:", n)
	// Output:
	// true
	// rows written: 0
}

// A value that its owner's DEK does not open (here, another owner's token
// copied in with raw SQL) is left at its zero value, and the error names
// the model, field and owner.
func ExampleFieldError() {
	db, done := openExample("fielderror", exampleKeys())
	defer done()

	alice := Login{UserID: 1, Site: "lco", Password: "alice-secret"}
	bob := Login{UserID: 2, Site: "lco", Password: "bob-secret"}
	if err := db.Create(&[]*Login{&alice, &bob}).Error; err != nil {
		panic(err)
	}
	err := db.Exec("UPDATE logins SET password = (SELECT password FROM logins WHERE id = ?) WHERE id = ?", bob.ID, alice.ID).Error
	if err != nil {
		panic(err)
	}

	var got Login
	err = db.First(&got, alice.ID).Error
	var fe *envelope.FieldError
	if errors.As(err, &fe) {
		fmt.Println(fe.Model, fe.Field, fe.Owner)
	}
	fmt.Println(errors.Is(err, envelope.ErrDecrypt), got.Password == "")
	// Output:
	// Login Password 1
	// true true
}

// After Shred, the owner's values read as ErrShredded and new writes for
// the owner are refused; other owners are untouched.
func ExampleShred() {
	db, done := openExample("shred", exampleKeys())
	defer done()

	for _, l := range []Login{{UserID: 1, Password: "one"}, {UserID: 2, Password: "two"}} {
		if err := db.Create(&l).Error; err != nil {
			panic(err)
		}
	}
	if err := envelope.Shred(db, 1); err != nil {
		panic(err)
	}

	var l1, l2 Login
	err := db.Where("user_id = ?", 1).First(&l1).Error
	fmt.Println(errors.Is(err, envelope.ErrShredded), l1.Password == "")
	err = db.Create(&Login{UserID: 1, Password: "again"}).Error
	fmt.Println(errors.Is(err, envelope.ErrShredded))
	err = db.Where("user_id = ?", 2).First(&l2).Error
	fmt.Println(err, l2.Password)
	// Output:
	// true true
	// true
	// <nil> two
}
