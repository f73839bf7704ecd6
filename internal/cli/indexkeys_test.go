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
	"github.com/gorm-envelope/envelope/internal/indexkeys"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

func mustKeyring(t *testing.T, primary string, previous ...string) *dek.Keyring {
	t.Helper()
	r, err := dek.ParseKeyring(primary, previous...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// The commands count, rewrap and verify blind-index keys beside the DEKs
// and say so, and refuse to rotate when one cannot be opened.
func TestIndexKeysOutput(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		ctx := context.Background()
		old := newFernet(t)
		seedServer(t, db, old, 5)
		s := indexkeys.New(db, mustKeyring(t, old), -1)
		if err := s.EnsureTable(ctx); err != nil {
			t.Fatal(err)
		}
		v1, err := s.Live(ctx, "email", true)
		if err != nil {
			t.Fatal(err)
		}
		v2, err := s.Add(ctx, "email")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := s.Live(ctx, "phone", true); err != nil {
			t.Fatal(err)
		}
		envFile := filepath.Join(t.TempDir(), "app.env")
		if err := os.WriteFile(envFile, []byte("DEK_ENCRYPTION_KEY="+old+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		db0 := []string{"--driver", string(testdb.DialectOf(db)), "--dsn", testdb.DSN(t, db)}
		run := func(args ...string) (int, string, string) {
			t.Helper()
			code, stdout, stderr := runCLI(t, map[string]string{}, false, append(db0, args...)...)
			if strings.Contains(stdout+stderr, old) {
				t.Fatalf("%v: the output holds the old key", args)
			}
			return code, stdout, stderr
		}
		matches := func(what, out string, res ...string) {
			t.Helper()
			for _, re := range res {
				if !regexp.MustCompile(re).MatchString(out) {
					t.Errorf("%s: no match for %q in\n%s", what, re, out)
				}
			}
		}

		code, stdout, stderr := run("status", "--env-file", envFile)
		if code != exitOK || stderr != "" {
			t.Fatalf("status: exit %d\n%s%s", code, stdout, stderr)
		}
		matches("status", stdout, `(?m)^key +fingerprint +DEKs +index keys$`, `(?m)^primary +fernet:\w{8} +5 +3$`,
			`(?m)^none \(undecryptable\) +0 +0$`, `(?m)^total +5 +3$`)

		code, stdout, stderr = run("rotate", "--dry-run", "--env-file", envFile)
		if code != exitOK || !strings.Contains(stdout, "dry run: would rotate 5 DEKs (0 already current, 0 empty, 0 shredded) and rewrap 3 blind-index keys (0 already current); nothing was changed\n") {
			t.Fatalf("dry run: exit %d\n%s%s", code, stdout, stderr)
		}
		if b, _ := os.ReadFile(envFile); string(b) != "DEK_ENCRYPTION_KEY="+old+"\n" {
			t.Fatal("the dry run changed the env file")
		}

		code, stdout, stderr = run("rotate", "--env-file", envFile, "--batch-size", "2")
		if code != exitOK {
			t.Fatalf("rotate: exit %d\n%s%s", code, stdout, stderr)
		}
		matches("rotate", stdout, `rotated 5 DEKs to (fernet:\w{8}): 5 under it, 0 empty, 0 shredded\n`,
			`rewrapped 3 blind-index keys to fernet:\w{8}: 3 under it; no key and no index value changed\n`)
		vars, err := readEnvFile(envFile)
		if err != nil {
			t.Fatal(err)
		}
		newKey := vars[dek.EnvKey]
		// The app, with the new key alone, gets the same keys as before.
		vs, err := indexkeys.New(db, mustKeyring(t, newKey), 0).Live(ctx, "email", false)
		if err != nil || len(vs) != 2 || vs[0] != v2 || vs[1] != v1[0] {
			t.Fatalf("after the rotation: %d versions, %v", len(vs), err)
		}

		code, stdout, _ = run("status", "--env-file", envFile)
		matches("status after", stdout, `(?m)^primary +fernet:\w{8} +5 +3$`, `(?m)^previous 1 +fernet:\w{8} +0 +0$`,
			`previous key 1 \(fernet:\w{8}\) opens no DEK and no blind-index key: it can be retired`)
		code, stdout, stderr = runCLI(t, map[string]string{dek.EnvKey: newKey}, false, append(db0, "verify")...)
		if code != exitOK {
			t.Fatalf("verify with the new key: exit %d\n%s%s", code, stdout, stderr)
		}
		matches("verify", stdout, `verified 5 profiles: every DEK opens \(0 empty, 0 shredded\)\n`, `verified 3 blind-index keys: every one opens\n`)

		// An index key under a key the env file does not hold.
		lost := newFernet(t)
		if _, err := indexkeys.New(db, mustKeyring(t, lost), -1).Live(ctx, "ssn", true); err != nil {
			t.Fatal(err)
		}
		code, stdout, stderr = run("status", "--env-file", envFile)
		if code != exitOK || stderr != "envelope: warning: 1 blind-index key opens under no configured key; envelope verify names it and exits 1\n" {
			t.Errorf("status: exit %d, stderr %q", code, stderr)
		}
		matches("status", stdout, `(?m)^none \(undecryptable\) +0 +1$`, `(?m)^total +5 +4$`)
		code, _, stderr = run("verify", "--env-file", envFile)
		if code != exitFail {
			t.Errorf("verify: exit %d", code)
		}
		matches("verify", stderr, `(?m)^envelope: cannot open: blind-index key ssn v1 \(id \d+\): cannot decrypt: no configured master key opens this key$`,
			`envelope: verify: 1 blind-index key could not be opened\n$`)
		before, _ := os.ReadFile(envFile)
		code, stdout, stderr = run("rotate", "--env-file", envFile)
		if code != exitFail || !strings.HasSuffix(stderr, "envelope: rotate: refused: 1 blind-index key cannot be opened with the current keys; nothing was changed\n") {
			t.Errorf("rotate: exit %d\n%s%s", code, stdout, stderr)
		}
		if after, _ := os.ReadFile(envFile); string(after) != string(before) {
			t.Error("a refused rotation changed the env file")
		}
		if strings.Contains(stdout+stderr, lost) || strings.Contains(stdout+stderr, newKey) {
			t.Error("the output holds a key")
		}
	})
}
