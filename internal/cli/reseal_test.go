package cli

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/bound"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/internal/testpy"
	"github.com/gorm-envelope/envelope/internal/token"
)

// rsCred is the app's model reseal works on in these tests.
type rsCred struct {
	ID       uint
	UserID   uint    `envelope:"owner"`
	Password string  `gorm:"serializer:envelope"`
	APIKey   *string `gorm:"serializer:envelope"`
}

func (rsCred) TableName() string { return "rs_creds" }

// rsArgs are reseal's flags for rsCred.
var rsArgs = []string{"reseal", "--model-table", "rs_creds", "--owner", "user_id", "--column", "password,api_key"}

func rsPassword(i int) string { return fmt.Sprintf("pw-%d", i) }
func rsAPIKey(i int) *string {
	if i%2 == 1 {
		return nil
	}
	s := fmt.Sprintf("key-%d", i)
	return &s
}

// boundApp is the app after it set Config.Format to FormatBound.
func boundApp(t *testing.T, db *gorm.DB, key string) *gorm.DB {
	t.Helper()
	keys, err := dek.ParseKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	h := testdb.Reopen(t, db)
	if err := h.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Format: envelope.FormatBound, Logger: slog.New(slog.DiscardHandler)})); err != nil {
		t.Fatal(err)
	}
	return h
}

// rsStored returns the stored non-NULL values of rs_creds, in id order.
func rsStored(t *testing.T, db *gorm.DB) []string {
	t.Helper()
	var out []string
	for _, col := range []string{"password", "api_key"} {
		for _, v := range pluckColumn(t, db, col) {
			if v.Valid {
				out = append(out, v.String)
			}
		}
	}
	return out
}

func pluckColumn(t *testing.T, db *gorm.DB, column string) []sql.NullString {
	t.Helper()
	var vals []sql.NullString
	if err := db.Session(&gorm.Session{NewDB: true}).Table("rs_creds").Order("id").Pluck(column, &vals).Error; err != nil {
		t.Fatal(err)
	}
	return vals
}

// rsReads reports the rows of rs_creds that h does not read as written.
func rsReads(t *testing.T, h *gorm.DB, n int) []string {
	t.Helper()
	var got []rsCred
	if err := h.Order("id").Find(&got).Error; err != nil {
		return []string{err.Error()}
	}
	var bad []string
	for i, c := range got {
		w := rsAPIKey(i)
		if c.Password != rsPassword(i) || (c.APIKey == nil) != (w == nil) || (w != nil && *c.APIKey != *w) {
			bad = append(bad, fmt.Sprintf("row %d", i))
		}
	}
	if len(got) != n {
		bad = append(bad, fmt.Sprintf("%d rows, want %d", len(got), n))
	}
	return bad
}

// A dry run counts and writes nothing; the run moves every value of the
// Fernet table to the bound format, which the app reads after setting
// Config.Format; a run after the last key, and a run again, find nothing
// to do.
func TestReseal(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		key := newFernet(t)
		useApp(t, db, key, &Profile{})
		if err := db.AutoMigrate(&Profile{}, &rsCred{}); err != nil {
			t.Fatal(err)
		}
		const n = 10
		values := 0
		for i := range n {
			if err := db.Create(&rsCred{UserID: uint(i%3 + 1), Password: rsPassword(i), APIKey: rsAPIKey(i)}).Error; err != nil {
				t.Fatal(err)
			}
			values += 1 + btoi(rsAPIKey(i) != nil)
		}
		before := rsStored(t, db)
		vars := map[string]string{dek.EnvKey: key, "ENVELOPE_DRIVER": string(testdb.DialectOf(db)), "ENVELOPE_DSN": testdb.DSN(t, db)}
		code, stdout, stderr := runCLI(t, vars, false, append(rsArgs, "--format", "bound", "--dry-run")...)
		want := fmt.Sprintf("dry run: would reseal %d and import 0 values of rs_creds in the bound format (%d rows scanned, 0 values already bound, 0 unreadable); nothing was written\n", values, n)
		if code != exitOK || stdout != want || stderr != "" {
			t.Fatalf("dry run: exit %d\n%s%s", code, stdout, stderr)
		}
		if !slices.Equal(rsStored(t, db), before) {
			t.Fatal("the dry run wrote values")
		}
		code, stdout, stderr = runCLI(t, vars, true, append(rsArgs, "--format", "bound", "--batch-size", "3")...)
		want = fmt.Sprintf("resealed rs_creds in the bound format: %d rows scanned, %d values resealed, 0 imported, 0 already bound, 0 unreadable\n", n, values)
		if code != exitOK || stdout != want || !strings.Contains(stderr, "resealing [") {
			t.Fatalf("reseal: exit %d\n%s%s", code, stdout, stderr)
		}
		for i, v := range rsStored(t, db) {
			if !bound.IsBound([]byte(v)) {
				t.Fatalf("value %d not bound after reseal", i)
			}
		}
		if bad := rsReads(t, boundApp(t, db, key), n); len(bad) > 0 {
			t.Fatalf("the bound app reads: %v", bad)
		}
		if bad := rsReads(t, db, n); len(bad) > 0 {
			t.Fatalf("the Fernet app reads: %v", bad)
		}
		// After the last key there is nothing; from the start, nothing to do.
		code, stdout, stderr = runCLI(t, vars, false, append(rsArgs, "--format", "bound", "--after", fmt.Sprint(n))...)
		if code != exitOK || stdout != "resealed rs_creds in the bound format: 0 rows scanned, 0 values resealed, 0 imported, 0 already bound, 0 unreadable\n" {
			t.Fatalf("--after %d: exit %d\n%s%s", n, code, stdout, stderr)
		}
		code, stdout, stderr = runCLI(t, vars, false, append(rsArgs, "--format", "bound")...)
		if code != exitOK || stdout != fmt.Sprintf("resealed rs_creds in the bound format: %d rows scanned, 0 values resealed, 0 imported, %d already bound, 0 unreadable\n", n, values) {
			t.Fatalf("again: exit %d\n%s%s", code, stdout, stderr)
		}
		// And back, from row 5 on: rows 1 to 5 stay bound.
		code, stdout, stderr = runCLI(t, vars, false, append(rsArgs, "--format", "fernet", "--after", "5")...)
		if code != exitOK || !strings.HasPrefix(stdout, fmt.Sprintf("resealed rs_creds in the fernet format: %d rows scanned", n-5)) {
			t.Fatalf("to fernet after 5: exit %d\n%s%s", code, stdout, stderr)
		}
		pw := pluckColumn(t, db, "password")
		for i, v := range pw {
			if isBound := bound.IsBound([]byte(v.String)); isBound != (i < 5) || (!isBound && !token.LooksLikeString(v.String)) {
				t.Errorf("row %d: bound %v after the run to fernet after row 5", i, isBound)
			}
		}
		if bad := rsReads(t, db, n); len(bad) > 0 {
			t.Fatalf("the app reads the mixed table: %v", bad)
		}
	})
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// pyTOMTokens encrypts d["values"] as TOM Toolkit 3 does under
// d["secret"] (tom_common/encryption.py).
const pyTOMTokens = `
import json, sys
from base64 import urlsafe_b64encode
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
d = json.load(open(sys.argv[1]))
key = urlsafe_b64encode(HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b'tom-toolkit-encryption-v1').derive(d["secret"].encode()))
print(json.dumps([Fernet(key).encrypt(v.encode()).decode() for v in d["values"]]))
`

// Values of TOM Toolkit 3 (its SECRET_KEY from the environment) and under
// an app-wide Fernet key (from the flag) are imported into the owners'
// DEKs; a value neither opens is named on stderr and left as it is; no
// key, secret or plaintext is printed.
func TestResealImport(t *testing.T) {
	const secret = "django-insecure-tom-secret-for-the-cli-test"
	py := testpy.Python(t, "cryptography.hazmat.primitives.kdf.hkdf")
	var tom []string
	testpy.Run(t, py, pyTOMTokens, map[string]any{"secret": secret, "values": []string{"pw-0", "key-0", "pw-1"}}, &tom)
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		key := newFernet(t)
		useApp(t, db, key, &Profile{})
		if err := db.AutoMigrate(&Profile{}, &rsCred{}); err != nil {
			t.Fatal(err)
		}
		appKey := newFernet(t)
		ak, _ := dek.ParseKey(appKey)
		seal := func(k *dek.FernetKey, s string) string {
			tok, err := k.Encrypt(context.Background(), []byte(s))
			if err != nil {
				t.Fatal(err)
			}
			return string(tok)
		}
		wk, _ := dek.ParseKey(newFernet(t))
		raw := db.Session(&gorm.Session{NewDB: true})
		for i, r := range [][3]any{
			{1, tom[0], tom[1]},
			{2, tom[2], nil},
			{1, seal(ak, "pw-2"), seal(ak, "key-2")},
			{3, seal(wk, "unopenable"), nil},
		} {
			if err := raw.Exec("INSERT INTO rs_creds (id, user_id, password, api_key) VALUES (?, ?, ?, ?)", i+1, r[0], r[1], r[2]).Error; err != nil {
				t.Fatal(err)
			}
		}
		unopenable := pluckColumn(t, db, "password")[3].String
		vars := map[string]string{dek.EnvKey: key, envTOMSecretKey: secret, "ENVELOPE_DRIVER": string(testdb.DialectOf(db)), "ENVELOPE_DSN": testdb.DSN(t, db)}
		code, stdout, stderr := runCLI(t, vars, false, append(rsArgs, "--format", "fernet", "--fernet-key", appKey, "--batch-size", "2")...)
		if code != exitOK || stdout != "resealed rs_creds in the fernet format: 4 rows scanned, 0 values resealed, 5 imported, 0 already fernet, 1 unreadable\n" {
			t.Fatalf("reseal: exit %d\n%s%s", code, stdout, stderr)
		}
		wantErr := "envelope: cannot open: rs_creds id=4 column password (owner 3): cannot decrypt: value does not open under the import key\n" +
			"envelope: warning: 1 value of rs_creds open under neither the owner's DEK nor an import key: left as they were\n"
		if stderr != wantErr {
			t.Errorf("stderr %q, want %q", stderr, wantErr)
		}
		for _, s := range []string{secret, appKey, key, "pw-", "key-", "unopenable"} {
			if strings.Contains(stdout+stderr, s) {
				t.Errorf("the output holds %q", s)
			}
		}
		if got := pluckColumn(t, db, "password")[3].String; got != unopenable {
			t.Error("the unreadable value was rewritten")
		}
		var got []rsCred
		if err := db.Where("id < ?", 4).Order("id").Find(&got).Error; err != nil {
			t.Fatal(err)
		}
		if len(got) != 3 || got[0].Password != "pw-0" || got[0].APIKey == nil || *got[0].APIKey != "key-0" || got[1].Password != "pw-1" || got[1].APIKey != nil ||
			got[2].Password != "pw-2" || got[2].APIKey == nil || *got[2].APIKey != "key-2" {
			t.Fatalf("the app reads %+v", got)
		}
	})
}

// A bad command line exits 2 with one line naming the flag at fault,
// before the database is opened; a bad import key is not printed.
func TestResealUsage(t *testing.T) {
	vars := map[string]string{"ENVELOPE_DRIVER": "sqlite", "ENVELOPE_DSN": ":memory:"}
	badKey := "not-a-fernet-key-but-secret"
	base := func(more ...string) []string { return append(slices.Clone(rsArgs), more...) }
	for i, tc := range []struct {
		args []string
		want string
	}{
		{base(), "set --format"},
		{base("--format", "aes"), `--format "aes": want fernet or bound`},
		{[]string{"reseal", "--owner", "user_id", "--column", "password", "--format", "bound"}, "set --model-table"},
		{[]string{"reseal", "--model-table", "t", "--column", "password", "--format", "bound"}, "set --owner"},
		{[]string{"reseal", "--model-table", "t", "--owner", "user_id", "--format", "bound"}, "set --column"},
		{base("--format", "bound", "--column", "user_id"), "--column user_id is already given as --owner"},
		{base("--format", "bound", "--column", "a;b"), `--column "a;b": a name cannot hold`},
		{base("--format", "bound", "--after", "x"), `--after "x": the primary key is an integer`},
		{base("--format", "bound", "--table", "rs_creds"), "--model-table rs_creds is the profile table"},
		{base("--format", "bound", "--owner-column", "-"), "--owner-column is -"},
		{[]string{"reseal", "--model-table", "t", "--owner", "id", "--column", "email", "--format", "bound", "--row"}, "--row: the owner is the primary key id"},
		{base("--format", "bound", "--fernet-key", badKey), "--fernet-key (or ENVELOPE_IMPORT_FERNET_KEY): want 44 characters"},
	} {
		code, stdout, stderr := runCLI(t, vars, false, tc.args...)
		if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 ||
			!strings.HasPrefix(stderr, "envelope: reseal: ") || !strings.Contains(stderr, tc.want) || strings.Contains(stderr, badKey) {
			t.Errorf("#%d %v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", i, tc.args, code, stdout, stderr, tc.want)
		}
	}
}

// Help names the import flags and their variables, and prints no value.
func TestResealHelpHidesKeys(t *testing.T) {
	vars := map[string]string{envTOMSecretKey: "tom-hidden-secret", envImportFernetKey: "fernet-hidden-key"}
	code, stdout, stderr := runCLI(t, vars, false, "reseal", "--help")
	if code != exitOK || !strings.Contains(stdout, "-tom-secret-key") || !strings.Contains(stdout, "$"+envImportFernetKey) || strings.Contains(stdout+stderr, "hidden") {
		t.Errorf("reseal --help: exit %d\n%s%s", code, stdout, stderr)
	}
}

// --row tags the primary key of the struct the command makes.
func TestResealStruct(t *testing.T) {
	r := resealFlags{table: "notes", pk: "id", owner: "user_id", pkType: colType{name: "int"}, ownerType: colType{name: "int"}, columns: listFlag{"body"}, row: true, format: "bound"}
	s, format, err := r.spec("profiles", "user_id")
	if err != nil || format != envelope.FormatBound {
		t.Fatal(format, err)
	}
	if f := s.structType().Field(0); f.Tag != `gorm:"primaryKey;column:id" envelope:"row"` {
		t.Errorf("primary key tag %s", f.Tag)
	}
}
