package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// testKMS is an in-process KMS for tests: the URL test://<Fernet key text>
// holds that Fernet key. It counts the keys it opened and those closed.
type testKMS struct {
	mu             sync.Mutex
	opened, closed int
}

// closingKey is a Fernet master key that must be closed, as a KMS
// client must.
type closingKey struct {
	*dek.FernetKey
	kms *testKMS
}

func (k closingKey) Close() error {
	k.kms.mu.Lock()
	defer k.kms.mu.Unlock()
	k.kms.closed++
	return nil
}

func (m *testKMS) open(_ context.Context, url string) (dek.Encrypter, error) {
	text, ok := strings.CutPrefix(url, "test://")
	if !ok {
		// A driver's error may quote the URL it was given.
		return nil, fmt.Errorf("no driver for %q", url)
	}
	k, err := dek.ParseKey(text)
	if err != nil {
		return nil, errors.New("bad test key")
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.opened++
	return closingKey{k, m}, nil
}

func (m *testKMS) ext() Extensions { return Extensions{OpenKMS: m.open} }

// balanced reports whether every key opened was closed.
func (m *testKMS) balanced(t *testing.T) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.opened == 0 || m.opened != m.closed {
		t.Errorf("KMS keys: %d opened, %d closed", m.opened, m.closed)
	}
}

func keyIDOf(t *testing.T, text string) string {
	t.Helper()
	k, err := dek.ParseKey(text)
	if err != nil {
		t.Fatal(err)
	}
	return k.ID()
}

func newFernet(t *testing.T) string {
	t.Helper()
	k, err := dek.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

const noKMSLine = "envelope: this build has no KMS support; use github.com/gorm-envelope/envelope/kms/cmd/envelope (see docs/deployment.md)\n"

// The core build refuses --kms-url, ENVELOPE_KMS_URL and key URLs in the
// key variables with one line, and never prints the URL.
func TestNoKMSSupport(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	dsn := testdb.DSN(t, db)
	k := newFernet(t)
	url := "test://" + newFernet(t)
	base := map[string]string{"ENVELOPE_DRIVER": "sqlite", "ENVELOPE_DSN": dsn, dek.EnvKey: k}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, tc := range []struct {
		name string
		vars map[string]string
		args []string
		code int
	}{
		{"flag", base, []string{"--kms-url", url, "status"}, exitUsage},
		{"flag after the command", base, []string{"rotate", "--kms-url", url}, exitUsage},
		{"variable", with("ENVELOPE_KMS_URL", url), []string{"verify"}, exitUsage},
		{"backfill", with("ENVELOPE_KMS_URL", url), []string{"backfill"}, exitUsage},
		{"primary key URL", with(dek.EnvKey, url), []string{"status"}, exitFail},
		{"previous key URL", with(dek.EnvKeyPrevious, url), []string{"rotate"}, exitFail},
	} {
		code, stdout, stderr := runCLI(t, tc.vars, false, tc.args...)
		if code != tc.code || stderr != noKMSLine || stdout != "" {
			t.Errorf("%s: exit %d, stdout %q, stderr %q; want exit %d and the no-KMS line", tc.name, code, stdout, stderr, tc.code)
		}
	}
	// keygen needs no key.
	if code, _, stderr := runCLI(t, with("ENVELOPE_KMS_URL", url), false, "keygen"); code != 0 {
		t.Errorf("keygen with ENVELOPE_KMS_URL set: exit %d %s", code, stderr)
	}
}

// Help prints neither the DSN (a password) nor the KMS URL (key material
// for base64key://) that the environment sets.
func TestHelpHidesSecrets(t *testing.T) {
	vars := map[string]string{"ENVELOPE_DSN": "postgres://app:s3cret-pw@db/app", "ENVELOPE_KMS_URL": "test://hidden-key-material"}
	for _, args := range [][]string{{"--help"}, {"status", "--help"}, {"help", "rotate"}} {
		for _, ext := range []Extensions{{}, (&testKMS{}).ext()} {
			code, stdout, stderr := runWith(t, ext, vars, false, args...)
			if code != 0 || strings.Contains(stdout+stderr, "s3cret") || strings.Contains(stdout+stderr, "hidden-key") {
				t.Errorf("%v: exit %d\n%s%s", args, code, stdout, stderr)
			}
			if !strings.Contains(stdout, "-kms-url") {
				t.Errorf("%v: no --kms-url in help:\n%s", args, stdout)
			}
		}
	}
}

// Migrating a deployment from an env key to a KMS key, end to end: rotate
// --kms-url --env-file records the key URL as primary and the old key as
// previous, and every DEK ends under the KMS key; status, verify and
// backfill then reach the KMS key through the URL in the file.
func TestRotateToKMS(t *testing.T) {
	for _, d := range []testdb.Dialect{testdb.SQLite, testdb.MySQL} {
		t.Run(string(d), func(t *testing.T) {
			t.Parallel()
			db := testdb.Open(t, d)
			old := newFernet(t)
			kmsKey := newFernet(t)
			url := "test://" + kmsKey
			seedServer(t, db, old, 30)
			if err := db.Create(&Profile{UserID: 31}).Error; err != nil {
				t.Fatal(err)
			}
			envFile := filepath.Join(t.TempDir(), "app.env")
			if err := os.WriteFile(envFile, []byte("A=1\nDEK_ENCRYPTION_KEY="+old+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			m := &testKMS{}
			vars := map[string]string{"ENVELOPE_DRIVER": string(d), "ENVELOPE_DSN": testdb.DSN(t, db)}
			cli := func(args ...string) (int, string, string) {
				t.Helper()
				code, stdout, stderr := runWith(t, m.ext(), vars, false, args...)
				if strings.Contains(stdout+stderr, kmsKey) || strings.Contains(stdout+stderr, old) {
					t.Errorf("%v printed a key:\n%s%s", args, stdout, stderr)
				}
				return code, stdout, stderr
			}
			kmsID, oldID := keyIDOf(t, kmsKey), keyIDOf(t, old)

			// Before: the KMS key is primary and opens nothing yet.
			code, stdout, stderr := cli("--kms-url", url, "status", "--env-file", envFile)
			if code != 0 || !regexp.MustCompile(`primary +`+kmsID+` +0\n`).MatchString(stdout) ||
				!regexp.MustCompile(`previous 1 +`+oldID+` +30\n`).MatchString(stdout) {
				t.Fatalf("status before: exit %d\n%s%s", code, stdout, stderr)
			}

			// Refused combinations, before anything is written.
			if code, _, stderr := cli("--kms-url", url, "rotate", "--env-file", envFile, "--new-key", newFernet(t)); code != exitUsage || !strings.Contains(stderr, "--kms-url and --new-key exclude each other") {
				t.Errorf("--kms-url with --new-key: exit %d %s", code, stderr)
			}
			if code, _, stderr := cli("--kms-url", url, "rotate", "--env-file", envFile, "--resume"); code != exitUsage || !strings.Contains(stderr, "--resume finishes a rotation") {
				t.Errorf("--kms-url with --resume to another key: exit %d %s", code, stderr)
			}

			code, stdout, stderr = cli("--kms-url", url, "rotate", "--env-file", envFile, "--batch-size", "7")
			if code != 0 || !strings.Contains(stdout, "rotated 30 DEKs to "+kmsID+": 30 under it, 1 empty, 0 shredded") {
				t.Fatalf("rotate: exit %d\n%s%s", code, stdout, stderr)
			}
			b, _ := os.ReadFile(envFile)
			if want := "A=1\nDEK_ENCRYPTION_KEY=" + url + "\nDEK_ENCRYPTION_KEY_PREVIOUS=" + old + "\n"; string(b) != want {
				t.Errorf("env file:\n%s\nwant:\n%s", b, want)
			}

			// The file alone now names the KMS key.
			code, stdout, _ = cli("status", "--env-file", envFile)
			if code != 0 || !regexp.MustCompile(`primary +`+kmsID+` +30\n`).MatchString(stdout) ||
				!regexp.MustCompile(`previous 1 +`+oldID+` +0\n`).MatchString(stdout) {
				t.Errorf("status after: exit %d\n%s", code, stdout)
			}
			if code, stdout, stderr := cli("backfill", "--env-file", envFile); code != 0 || !strings.Contains(stdout, "gave a new DEK to 1 profiles") {
				t.Errorf("backfill: exit %d\n%s%s", code, stdout, stderr)
			}
			// The KMS key alone opens every DEK, the backfilled one too.
			if code, stdout, stderr := cli("--kms-url", url, "verify"); code != 0 || !strings.Contains(stdout, "verified 31 profiles: every DEK opens (0 empty, 0 shredded)") {
				t.Errorf("verify with the KMS key alone: exit %d\n%s%s", code, stdout, stderr)
			}
			checkUnder(t, db, kmsKey, 31)

			// Again: nothing new is recorded, nothing is left to rotate.
			code, stdout, stderr = cli("--kms-url", url, "rotate", "--env-file", envFile)
			if code != 0 || !strings.Contains(stdout, "rotated 0 DEKs to "+kmsID) {
				t.Errorf("second rotate: exit %d\n%s%s", code, stdout, stderr)
			}
			if b2, _ := os.ReadFile(envFile); string(b2) != string(b) {
				t.Errorf("second rotate changed the env file:\n%s", b2)
			}
			m.balanced(t)
		})
	}
}

// checkUnder asserts that n DEKs are stored and every one opens under key
// alone.
func checkUnder(t *testing.T, db *gorm.DB, key string, n int) {
	t.Helper()
	keys, err := dek.ParseKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	var ps []Profile
	if err := db.Find(&ps).Error; err != nil {
		t.Fatal(err)
	}
	if len(ps) != n {
		t.Fatalf("%d profiles, want %d", len(ps), n)
	}
	for _, p := range ps {
		if _, _, err := keys.Open(context.Background(), p.EncryptedDEK); err != nil {
			t.Errorf("owner %d: %v", p.UserID, err)
		}
	}
}

// Without --env-file, rotate --kms-url prints the two lines to set; key
// URLs and Fernet keys mix in the variables; OpenKMS errors name the
// variable and never the URL.
func TestKMSFromEnvironment(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	old, mid, kmsKey := newFernet(t), newFernet(t), newFernet(t)
	seedServer(t, db, old, 5)
	url := "test://" + kmsKey
	m := &testKMS{}
	vars := map[string]string{"ENVELOPE_DRIVER": "sqlite", "ENVELOPE_DSN": testdb.DSN(t, db), dek.EnvKey: mid, dek.EnvKeyPrevious: old}

	code, stdout, stderr := runWith(t, m.ext(), vars, false, "--kms-url", url, "rotate")
	if code != 0 {
		t.Fatalf("rotate: exit %d\n%s%s", code, stdout, stderr)
	}
	if want := dek.EnvKey + "=" + url + "\n" + dek.EnvKeyPrevious + "=" + mid + "," + old + "\n"; stdout != want {
		t.Errorf("stdout %q, want %q", stdout, want)
	}
	if !strings.Contains(stderr, "rotated 5 DEKs to "+keyIDOf(t, kmsKey)) {
		t.Errorf("stderr: %s", stderr)
	}

	// The printed lines, set: a key URL as primary, Fernet keys as previous.
	vars[dek.EnvKey], vars[dek.EnvKeyPrevious] = url, mid+","+old
	if code, stdout, stderr := runWith(t, m.ext(), vars, false, "verify"); code != 0 || !strings.Contains(stdout, "verified 5 profiles") {
		t.Errorf("verify: exit %d\n%s%s", code, stdout, stderr)
	}
	// A Fernet primary with the KMS key among the previous keys.
	vars[dek.EnvKey], vars[dek.EnvKeyPrevious] = mid, old+", "+url
	code, stdout, _ = runWith(t, m.ext(), vars, false, "status")
	if code != 0 || !regexp.MustCompile(`previous 2 +`+keyIDOf(t, kmsKey)+` +5\n`).MatchString(stdout) {
		t.Errorf("status: exit %d\n%s", code, stdout)
	}
	m.balanced(t)

	// An URL the build cannot open: the error names where it came from.
	vars[dek.EnvKeyPrevious] = "nokms://secret-material-in-url"
	code, _, stderr = runWith(t, m.ext(), vars, false, "status")
	if code != exitFail || stderr != "envelope: open the KMS key in DEK_ENCRYPTION_KEY_PREVIOUS (entry 1): no driver for \"<key URL>\"\n" {
		t.Errorf("unopenable URL: exit %d, stderr %q", code, stderr)
	}
	code, _, stderr = runWith(t, m.ext(), vars, false, "--kms-url", "test://not-a-key", "status")
	if code != exitFail || stderr != "envelope: open the KMS key in --kms-url: bad test key\n" {
		t.Errorf("bad --kms-url: exit %d, stderr %q", code, stderr)
	}
}
