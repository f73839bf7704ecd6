package cli

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// seedServer gives db a profile table with n DEKs under key.
func seedServer(t *testing.T, db *gorm.DB, key string, n int) {
	t.Helper()
	if err := db.AutoMigrate(&Profile{}); err != nil {
		t.Fatal(err)
	}
	keys, err := dek.ParseKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	ps := make([]Profile, n)
	for i := range ps {
		d, err := dek.NewDEK()
		if err != nil {
			t.Fatal(err)
		}
		s, err := keys.Seal(context.Background(), d)
		if err != nil {
			t.Fatal(err)
		}
		ps[i] = Profile{UserID: uint(i + 1), EncryptedDEK: s}
	}
	if err := db.CreateInBatches(ps, 100).Error; err != nil {
		t.Fatal(err)
	}
}

// The CLI against the database servers, end to end: rotate with an env
// file (with a progress bar, as on a terminal), then status and verify
// under the keys the file now holds, backfill, and verify with the new key
// alone.
func TestRotateServers(t *testing.T) {
	for _, d := range []testdb.Dialect{testdb.Postgres, testdb.MySQL} {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := testdb.Open(t, d)
			dsn := testdb.DSN(t, db)
			old, err := dek.GenerateKey()
			if err != nil {
				t.Fatal(err)
			}
			seedServer(t, db, old, 120)
			extra := []Profile{{UserID: 121, EncryptedDEK: dek.Tombstone()}, {UserID: 122}, {UserID: 123, EncryptedDEK: []byte{}}}
			if err := db.Create(&extra).Error; err != nil {
				t.Fatal(err)
			}
			envFile := filepath.Join(t.TempDir(), "app.env")
			if err := os.WriteFile(envFile, []byte("DEK_ENCRYPTION_KEY="+old+"\nOTHER=1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			noEnv := map[string]string{}
			db0 := []string{"--driver", string(d), "--dsn", dsn}
			code, stdout, stderr := runCLI(t, noEnv, true, append(db0, "rotate", "--env-file", envFile, "--batch-size", "16")...)
			if code != 0 {
				t.Fatalf("rotate: exit %d\n%s%s", code, stdout, stderr)
			}
			if !strings.Contains(stdout, "rotated 120 DEKs") || !strings.Contains(stdout, "120 under it, 2 empty, 1 shredded") ||
				!strings.Contains(stdout, "2 profiles have no DEK yet") {
				t.Errorf("stdout: %s", stdout)
			}
			if !strings.Contains(stderr, "\rrotating [") || !strings.Contains(stderr, "100% 123/123") {
				t.Errorf("no progress bar on stderr: %q", stderr)
			}
			if strings.Contains(stdout+stderr, old) {
				t.Error("output contains the old key")
			}
			b, _ := os.ReadFile(envFile)
			m := regexp.MustCompile(`^DEK_ENCRYPTION_KEY=(\S{44})\nOTHER=1\nDEK_ENCRYPTION_KEY_PREVIOUS=` + regexp.QuoteMeta(old) + "\n$").FindSubmatch(b)
			if m == nil {
				t.Fatalf("env file:\n%s", b)
			}
			newKey := string(m[1])

			code, stdout, _ = runCLI(t, noEnv, false, append(db0, "status", "--env-file", envFile)...)
			if code != 0 || !regexp.MustCompile(`primary +fernet:\w+ +120`).MatchString(stdout) || !regexp.MustCompile(`previous 1 +fernet:\w+ +0`).MatchString(stdout) {
				t.Errorf("status: exit %d\n%s", code, stdout)
			}
			code, stdout, stderr = runCLI(t, noEnv, false, append(db0, "backfill", "--env-file", envFile)...)
			if code != 0 || !strings.Contains(stdout, "gave a new DEK to 2 profiles") {
				t.Errorf("backfill: exit %d\n%s%s", code, stdout, stderr)
			}
			code, stdout, stderr = runCLI(t, noEnv, false, append(db0, "verify", "--env-file", envFile)...)
			if code != 0 || !strings.Contains(stdout, "verified 123 profiles: every DEK opens (0 empty, 1 shredded)") {
				t.Errorf("verify: exit %d\n%s%s", code, stdout, stderr)
			}
			// The new key alone opens everything; the old one alone nothing.
			code, _, stderr = runCLI(t, map[string]string{dek.EnvKey: newKey, "ENVELOPE_DRIVER": string(d), "ENVELOPE_DSN": dsn}, false, "verify")
			if code != 0 {
				t.Errorf("verify with the new key alone: exit %d\n%s", code, stderr)
			}
			code, _, stderr = runCLI(t, map[string]string{dek.EnvKey: old, "ENVELOPE_DRIVER": string(d), "ENVELOPE_DSN": dsn}, false, "verify")
			if code != 1 || !strings.Contains(stderr, "envelope: verify: 122 DEKs could not be opened") {
				t.Errorf("verify with the old key alone: exit %d\n%s", code, stderr)
			}
		})
	}
}
