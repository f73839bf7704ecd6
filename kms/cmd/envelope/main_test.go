package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"gocloud.dev/secrets/localsecrets"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/cli"
	"github.com/gorm-envelope/envelope/kms"
	"github.com/gorm-envelope/envelope/rotate"
)

type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

type Credential struct {
	ID       uint
	UserID   uint   `envelope:"owner"`
	Password string `gorm:"serializer:envelope"`
}

func openDB(t *testing.T, path string, keys *dek.Keyring) *gorm.DB {
	t.Helper()
	db, err := gorm.Open(sqlite.Open(path+"?_busy_timeout=5000"), &gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if s, err := db.DB(); err == nil {
			s.Close()
		}
	})
	if err := db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}})); err != nil {
		t.Fatal(err)
	}
	if err := db.AutoMigrate(&Profile{}, &Credential{}); err != nil {
		t.Fatal(err)
	}
	return db
}

func run(t *testing.T, args ...string) (string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	ext := cli.Extensions{OpenKMS: kms.OpenEncrypter}
	if code := cli.Main(args, strings.NewReader(""), &out, &errb, ext); code != 0 {
		t.Fatalf("envelope %s: exit %d\nstdout: %s\nstderr: %s", strings.Join(args, " "), code, out.String(), errb.String())
	}
	return out.String(), errb.String()
}

// The KMS build moves a deployment from a master key in an env file to a
// key held in a KMS, and never prints the key URL's secret.
func TestRotateEnvKeyToKMS(t *testing.T) {
	ctx := context.Background()
	t.Setenv(dek.EnvKey, "")
	t.Setenv(dek.EnvKeyPrevious, "")
	t.Setenv("ENVELOPE_KMS_URL", "")
	dir := t.TempDir()
	dbPath := filepath.Join(dir, "app.db")
	fernetText, _ := dek.GenerateKey()
	envOnly, _ := dek.ParseKeyring(fernetText)
	app := openDB(t, dbPath, envOnly)
	for u := uint(1); u <= 10; u++ {
		if err := app.Create(&Credential{UserID: u, Password: fmt.Sprint("pw-", u)}).Error; err != nil {
			t.Fatal(err)
		}
	}
	raw, _ := localsecrets.NewRandomKey()
	keyText := base64.URLEncoding.EncodeToString(raw[:])
	url := "base64key://" + keyText
	envFile := filepath.Join(dir, "app.env")
	if err := os.WriteFile(envFile, []byte("# app\n"+dek.EnvKey+"="+fernetText+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}

	out, errs := run(t, "--driver", "sqlite", "--dsn", dbPath, "--kms-url", url, "rotate", "--env-file", envFile)
	if strings.Contains(out+errs, keyText) {
		t.Fatalf("rotate printed the key URL:\n%s%s", out, errs)
	}
	env, _ := os.ReadFile(envFile)
	if want := dek.EnvKey + "=" + url + "\n" + dek.EnvKeyPrevious + "=" + fernetText + "\n"; !strings.Contains(string(env), want) {
		t.Fatalf("env file after rotate:\n%s", env)
	}

	kmsOnly, err := kms.ParseKeyring(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer kms.CloseKeyring(kmsOnly)
	st, err := rotate.Status(ctx, app, rotate.Options{Keys: kmsOnly, Profile: &Profile{}})
	if err != nil || st.Keys[0].Count != 10 || st.Undecryptable != 0 {
		t.Fatalf("status under the KMS key alone: %+v, %v", st, err)
	}
	after := openDB(t, dbPath, kmsOnly)
	var got []Credential
	if err := after.Order("user_id").Find(&got).Error; err != nil || len(got) != 10 || got[9].Password != "pw-10" {
		t.Fatalf("read under the KMS key alone: %d rows, %v", len(got), err)
	}

	// The keys as the env file now names them: the KMS key opens all.
	t.Setenv(dek.EnvKey, url)
	t.Setenv(dek.EnvKeyPrevious, fernetText)
	out, errs = run(t, "--driver", "sqlite", "--dsn", dbPath, "status")
	id := kmsOnly.Primary().(*kms.Keeper).ID()
	if !strings.Contains(out, id) || strings.Contains(out+errs, keyText) {
		t.Fatalf("status:\n%s%s", out, errs)
	}
	t.Logf("status after the move:\n%s", out)
}
