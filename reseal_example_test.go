package envelope_test

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// An app moves its table to the bound format, importing on the way the
// values an older version encrypted under one app-wide Fernet key.
func ExampleReseal() {
	type Profile struct {
		ID           uint
		UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
		EncryptedDEK []byte `envelope:"dek"`
	}
	type Secret struct {
		ID     uint
		UserID uint   `envelope:"owner"`
		Value  string `gorm:"serializer:envelope"`
	}
	key, _ := dek.GenerateKey() // a real app: dek.KeyringFromEnv
	keys, _ := dek.ParseKeyring(key)
	db, err := gorm.Open(sqlite.Open("file:/example-reseal?vfs=memdb"), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		panic(err)
	}
	sqlDB, _ := db.DB()
	defer sqlDB.Close()
	// Config.Format is set first, so that new writes are bound values.
	p := envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Format: envelope.FormatBound, Logger: slog.New(slog.DiscardHandler)})
	if err := db.Use(p); err != nil {
		panic(err)
	}
	if err := db.AutoMigrate(&Profile{}, &Secret{}); err != nil {
		panic(err)
	}

	// The old version's values: Fernet tokens under one app-wide key.
	appKey, _ := dek.GenerateKey()
	old, _ := dek.ParseKey(appKey)
	for i, v := range []string{"alpha", "beta", "gamma"} {
		tok, _ := old.Encrypt(context.Background(), []byte(v))
		db.Exec("INSERT INTO secrets (user_id, value) VALUES (?, ?)", i%2+1, string(tok))
	}

	from, err := envelope.FernetDecoder(appKey)
	if err != nil {
		panic(err)
	}
	res, err := envelope.Reseal(context.Background(), db, &Secret{}, envelope.ResealOptions{From: []envelope.Decoder{from}})
	if err != nil {
		panic(err)
	}
	fmt.Printf("%d rows: %d imported, %d unreadable\n", res.Scanned, res.Imported, res.Unreadable)

	var s Secret
	if err := db.First(&s, 2).Error; err != nil {
		panic(err)
	}
	fmt.Println(s.Value)
	// Output:
	// 3 rows: 3 imported, 0 unreadable
	// beta
}
