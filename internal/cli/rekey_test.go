package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// rkArgs are rekey-all's flags for rsCred and rxUser, two models of one
// command line, the second with a per-owner and a global blind index.
var rkArgs = []string{"rekey-all", "--format", "fernet", "--settle", "0",
	"--model-table", "rs_creds", "--owner", "user_id", "--column", "password,api_key",
	"--model-table", "app_users", "--owner", "user_id", "--column", "email", "--column", "phone",
	"--index", "email_idx=index:Email;scope:global;bits:12;transform:lower",
	"--index", "phone_idx=index:Phone;transform:digits"}

// rkDEKs opens every owner's DEK as stored now.
func rkDEKs(t *testing.T, db *gorm.DB, key string) map[uint]dek.DEK {
	t.Helper()
	keys, err := dek.ParseKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	var ps []Profile
	if err := db.Session(&gorm.Session{NewDB: true}).Order("id").Find(&ps).Error; err != nil {
		t.Fatal(err)
	}
	out := map[uint]dek.DEK{}
	for _, p := range ps {
		d, _, _, err := keys.OpenBound(context.Background(), p.EncryptedDEK, dek.Binding{Table: "profiles", Owner: fmt.Sprint(p.UserID)})
		if err != nil {
			t.Fatalf("owner %d: %v", p.UserID, err)
		}
		out[p.UserID] = d
	}
	return out
}

// A dry run counts and writes nothing; the run gives every owner a new
// DEK, and the app reads every value and finds every row by both indexes.
func TestRekeyAll(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		key := newFernet(t)
		useApp(t, db, key, &Profile{})
		if err := db.AutoMigrate(&Profile{}, &rsCred{}, &rxUser{}); err != nil {
			t.Fatal(err)
		}
		const n = 9
		values := 0
		for i := range n {
			if err := db.Create(&rsCred{UserID: uint(i%3 + 1), Password: rsPassword(i), APIKey: rsAPIKey(i)}).Error; err != nil {
				t.Fatal(err)
			}
			phone := rxPhone(i)
			if err := db.Create(&rxUser{UserID: uint(i%3 + 1), Email: rxEmail(i), Phone: &phone}).Error; err != nil {
				t.Fatal(err)
			}
			values += 1 + btoi(rsAPIKey(i) != nil) + 2
		}
		before := rkDEKs(t, db, key)
		vars := map[string]string{dek.EnvKey: key, "ENVELOPE_DRIVER": string(testdb.DialectOf(db)), "ENVELOPE_DSN": testdb.DSN(t, db)}

		code, stdout, stderr := runCLI(t, vars, false, append(rkArgs, "--dry-run")...)
		want := fmt.Sprintf("dry run: would rekey 3 owners and %d values (0 owners shredded, 0 already rekeyed by a stopped run); nothing was written\n", values)
		if code != exitOK || stdout != want || stderr != "" {
			t.Fatalf("dry run: exit %d\n%s%s", code, stdout, stderr)
		}
		for o, d := range rkDEKs(t, db, key) {
			if d != before[o] {
				t.Fatal("the dry run changed a DEK")
			}
		}

		code, stdout, stderr = runCLI(t, vars, true, append(rkArgs, "--batch-size", "2")...)
		want = fmt.Sprintf("rekeyed 3 owners: %d values sealed again, %d index values recomputed, 0 stragglers, 0 unreadable, 3 old DEKs destroyed (0 shredded owners skipped, 0 done by a stopped run)\n", values, n)
		if code != exitOK || stdout != want || !strings.Contains(stderr, "rekeying [") {
			t.Fatalf("rekey-all: exit %d\n%s%s", code, stdout, stderr)
		}
		for o, d := range rkDEKs(t, db, key) {
			if d == before[o] {
				t.Fatalf("owner %d kept its DEK", o)
			}
		}
		app := testdb.Reopen(t, db)
		useApp(t, app, key, &Profile{})
		if bad := rsReads(t, app, n); len(bad) > 0 {
			t.Fatalf("the app reads: %v", bad)
		}
		for i := range n {
			var got []rxUser
			err := app.Where(envelope.MatchOwner(uint(i%3+1), "Phone", rxPhone(i))).Find(&got).Error
			if err != nil || len(got) != 1 || got[0].Email != rxEmail(i) {
				t.Fatalf("user %d by the per-owner index: %v, %+v", i, err, got)
			}
			got = nil
			err = app.Where(envelope.Match("Email", rxEmail(i))).Find(&got).Error
			if err != nil || len(got) != 1 || *got[0].Phone != rxPhone(i) {
				t.Fatalf("user %d by the global index: %v, %+v", i, err, got)
			}
		}
	})
}

func TestRekeyAllUsage(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	vars := map[string]string{dek.EnvKey: newFernet(t), "ENVELOPE_DRIVER": "sqlite", "ENVELOPE_DSN": testdb.DSN(t, db)}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"rekey-all", "--format", "fernet"}, "rekey-all: describe each model"},
		{[]string{"rekey-all", "--format", "fernet", "--owner", "user_id"}, "give --model-table first"},
		{[]string{"rekey-all", "--model-table", "t", "--owner", "o", "--column", "c"}, "rekey-all: set --format"},
		{[]string{"rekey-all", "--format", "bound", "--model-table", "t", "--column", "c"}, "rekey-all: set --owner"},
		{[]string{"rekey-all", "--format", "bound", "--model-table", "t", "--owner", "o", "--column", "c", "--model-table", "t", "--owner", "o", "--column", "c"}, "given twice"},
		{[]string{"rekey-all", "--format", "bound", "--model-table", "t", "--owner", "o", "--column", "c", "--index", "i=index:nope"}, "rekey-all: --index i: index:nope is not a --source"},
	} {
		code, _, stderr := runCLI(t, vars, false, tc.args...)
		if code != exitUsage || !strings.Contains(stderr, tc.want) || strings.Count(stderr, "\n") > 2 {
			t.Errorf("%v: exit %d, stderr %q, want %q", tc.args, code, stderr, tc.want)
		}
	}
}
