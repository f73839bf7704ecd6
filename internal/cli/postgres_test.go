package cli

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// The CLI against PostgreSQL: rotate with an env file, then status, with a
// progress bar as on a terminal.
func TestRotatePostgres(t *testing.T) {
	db := testdb.Open(t, testdb.Postgres)
	dsn := testdb.DSN(t, db)
	if err := db.AutoMigrate(&Profile{}); err != nil {
		t.Fatal(err)
	}
	old, err := dek.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keys, _ := dek.ParseKeyring(old)
	for i := 1; i <= 120; i++ {
		d, _ := dek.NewDEK()
		s, _ := keys.Seal(context.Background(), d)
		if err := db.Create(&Profile{UserID: uint(i), EncryptedDEK: s}).Error; err != nil {
			t.Fatal(err)
		}
	}
	envFile := filepath.Join(t.TempDir(), "app.env")
	if err := os.WriteFile(envFile, []byte("DEK_ENCRYPTION_KEY="+old+"\nOTHER=1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	noEnv := map[string]string{}
	code, stdout, stderr := runCLI(t, noEnv, true, "--driver", "postgres", "--dsn", dsn, "rotate", "--env-file", envFile, "--batch-size", "16")
	if code != 0 {
		t.Fatalf("rotate: exit %d\n%s%s", code, stdout, stderr)
	}
	if !strings.Contains(stdout, "rotated 120 DEKs") {
		t.Errorf("stdout: %s", stdout)
	}
	if !strings.Contains(stderr, "\rrotating [") || !strings.Contains(stderr, "100% 120/120") {
		t.Errorf("no progress bar on stderr: %q", stderr)
	}
	if strings.Contains(stdout+stderr, old) {
		t.Error("output contains the old key")
	}
	b, _ := os.ReadFile(envFile)
	if !regexp.MustCompile(`^DEK_ENCRYPTION_KEY=\S{44}\nOTHER=1\nDEK_ENCRYPTION_KEY_PREVIOUS=` + regexp.QuoteMeta(old) + "\n$").Match(b) {
		t.Errorf("env file:\n%s", b)
	}
	code, stdout, _ = runCLI(t, noEnv, false, "--driver", "postgres", "--dsn", dsn, "status", "--env-file", envFile)
	if code != 0 || !regexp.MustCompile(`primary +fernet:\w+ +120`).MatchString(stdout) || !regexp.MustCompile(`previous 1 +fernet:\w+ +0`).MatchString(stdout) {
		t.Errorf("status: exit %d\n%s", code, stdout)
	}
}
