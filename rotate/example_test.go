package rotate_test

import (
	"context"
	"fmt"
	"log"

	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/rotate"
)

// Profile is an app's profile model: one row per owner, holding the
// owner's DEK encrypted under the master key.
type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

// openExample returns an in-memory database with three profiles whose
// DEKs are under oldKey, and one without a DEK.
func openExample(name, oldKey string) *gorm.DB {
	db, err := gorm.Open(sqlite.Open("file:"+name+"?mode=memory&cache=shared"), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		log.Fatal(err)
	}
	if err := db.AutoMigrate(&Profile{}); err != nil {
		log.Fatal(err)
	}
	old, err := dek.ParseKeyring(oldKey)
	if err != nil {
		log.Fatal(err)
	}
	for owner := uint(1); owner <= 3; owner++ {
		d, _ := dek.NewDEK()
		sealed, err := old.Seal(context.Background(), d)
		if err != nil {
			log.Fatal(err)
		}
		db.Create(&Profile{UserID: owner, EncryptedDEK: sealed})
	}
	db.Create(&Profile{UserID: 4})
	return db
}

// Rotate every DEK to a new master key, keeping the old key as a previous
// key so that every DEK stays readable while the rotation runs.
func Example() {
	ctx := context.Background()
	oldKey, _ := dek.GenerateKey()
	db := openExample("example", oldKey)

	newKey, _ := dek.GenerateKey()
	// Record newKey (the app's environment, a secret store) before this
	// point: from here on DEKs are written under it.
	keys, err := dek.ParseKeyring(newKey, oldKey)
	if err != nil {
		log.Fatal(err)
	}
	res, err := rotate.Run(ctx, db, rotate.Options{Keys: keys, Profile: &Profile{}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("rotated %d, already current %d, empty %d\n", res.Rotated, res.AlreadyCurrent, res.Empty)

	st, err := rotate.Status(ctx, db, rotate.Options{Keys: keys, Profile: &Profile{}})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("under the primary: %d, under the old key: %d\n", st.Keys[0].Count, st.Keys[1].Count)
	// Output:
	// rotated 3, already current 0, empty 1
	// under the primary: 3, under the old key: 0
}

// Give a DEK to every profile without one.
func ExampleBackfill() {
	ctx := context.Background()
	key, _ := dek.GenerateKey()
	db := openExample("backfill", key)
	keys, _ := dek.ParseKeyring(key)
	n, err := rotate.Backfill(ctx, db, rotate.Options{Keys: keys, Profile: &Profile{}})
	fmt.Println(n, err)
	// Output: 1 <nil>
}

// Verify fails when a DEK cannot be opened, naming its owner.
func ExampleVerify() {
	ctx := context.Background()
	lostKey, _ := dek.GenerateKey()
	db := openExample("verify", lostKey)
	other, _ := dek.GenerateKey()
	keys, _ := dek.ParseKeyring(other)
	st, err := rotate.Verify(ctx, db, rotate.Options{Keys: keys, Profile: &Profile{}})
	fmt.Println(err)
	fmt.Println(st.Failures[0].Owner, st.Failures[0].Reason)
	// Output:
	// verify: 3 DEKs could not be opened
	// 1 cannot decrypt: no configured master key opens this DEK
}
