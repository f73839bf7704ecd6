package cli

import (
	"bytes"
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// The app's users table before it had blind indexes, and after: a global
// 12-bit index of Email and a per-owner index of Phone.
type rxUserBefore struct {
	ID     uint
	UserID uint    `envelope:"owner"`
	Email  string  `gorm:"serializer:envelope"`
	Phone  *string `gorm:"serializer:envelope"`
}

func (rxUserBefore) TableName() string { return "app_users" }

type rxUser struct {
	ID       uint
	UserID   uint    `envelope:"owner"`
	Email    string  `gorm:"serializer:envelope"`
	EmailIdx *string `gorm:"size:80;index" envelope:"index:Email;scope:global;bits:12;transform:lower"`
	Phone    *string `gorm:"serializer:envelope"`
	PhoneIdx *string `gorm:"size:80" envelope:"index:Phone;transform:digits"`
}

func (rxUser) TableName() string { return "app_users" }

// rxArgs are reindex's flags for rxUser, the tags copied from it.
var rxArgs = []string{"reindex", "--model-table", "app_users", "--owner", "user_id", "--source", "email,phone",
	"--index", "email_idx=index:Email;scope:global;bits:12;transform:lower",
	"--index", "phone_idx=index:Phone;transform:digits"}

// useApp registers the plugin on db as the app does, with no cache, so
// that it sees at once the key versions the command adds and retires.
func useApp(t *testing.T, db *gorm.DB, key string, profile any) {
	t.Helper()
	keys, err := dek.ParseKeyring(key)
	if err != nil {
		t.Fatal(err)
	}
	p := envelope.New(envelope.Config{Keys: keys, Profile: profile, CacheTTL: -1, CacheSize: -1, Logger: slog.New(slog.DiscardHandler)})
	if err := db.Use(p); err != nil {
		t.Fatal(err)
	}
}

func rxEmail(i int) string { return fmt.Sprintf("user%d@example.org", i) }
func rxPhone(i int) string { return fmt.Sprintf("+1 555 %04d", i) }
func rxOwner(i int) uint   { return uint(i%7 + 1) }

// seedUsers writes before rows with the model without indexes, then adds
// the index columns, then after rows with the indexed model: every even
// row has a phone, the others a NULL one.
func seedUsers(t *testing.T, db *gorm.DB, before, after int) {
	t.Helper()
	if err := db.AutoMigrate(&Profile{}, &rxUserBefore{}); err != nil {
		t.Fatal(err)
	}
	phone := func(i int) *string {
		if i%2 == 1 {
			return nil
		}
		s := rxPhone(i)
		return &s
	}
	for i := range before {
		if err := db.Create(&rxUserBefore{UserID: rxOwner(i), Email: rxEmail(i), Phone: phone(i)}).Error; err != nil {
			t.Fatal(err)
		}
	}
	if err := db.AutoMigrate(&rxUser{}); err != nil {
		t.Fatal(err)
	}
	for i := before; i < before+after; i++ {
		if err := db.Create(&rxUser{UserID: rxOwner(i), Email: rxEmail(i), Phone: phone(i)}).Error; err != nil {
			t.Fatal(err)
		}
	}
}

// findsUsers reports the rows of users 0 to n-1 that the app's Match and
// MatchOwner do not find, or find with another value.
func findsUsers(t *testing.T, db *gorm.DB, n int, skip func(i int) bool) (missed []string) {
	t.Helper()
	for i := range n {
		if skip != nil && skip(i) {
			continue
		}
		var got []rxUser
		if err := db.Where(envelope.Match("Email", strings.ToUpper(rxEmail(i)))).Find(&got).Error; err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Email != rxEmail(i) {
			missed = append(missed, fmt.Sprintf("Match(Email) of user %d: %d rows", i, len(got)))
		}
		got = nil
		if err := db.Where(envelope.MatchOwner(rxOwner(i), "Email", rxEmail(i))).Find(&got).Error; err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0].Email != rxEmail(i) {
			missed = append(missed, fmt.Sprintf("MatchOwner(Email) of user %d: %d rows", i, len(got)))
		}
		if i%2 == 0 {
			got = nil
			if err := db.Where(envelope.MatchOwner(rxOwner(i), "Phone", fmt.Sprintf("1 (555) %04d", i))).Find(&got).Error; err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].Phone == nil || *got[0].Phone != rxPhone(i) {
				missed = append(missed, fmt.Sprintf("MatchOwner(Phone) of user %d: %d rows", i, len(got)))
			}
		}
	}
	return missed
}

// versions counts the stored index values of column by key version ("" for
// NULL).
func versions(t *testing.T, db *gorm.DB, column string) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, v := range valuesOf(t, db, column) {
		if !v.Valid {
			out[""]++
			continue
		}
		ver, _, _ := strings.Cut(v.String, ":")
		out[ver]++
	}
	return out
}

type indexKeyRow struct {
	Name    string
	Version int
	Retired bool
}

func indexKeyRows(t *testing.T, db *gorm.DB) []indexKeyRow {
	t.Helper()
	var rows []indexKeyRow
	if err := db.Raw("SELECT name, version, retired FROM envelope_index_keys ORDER BY name, version").Scan(&rows).Error; err != nil {
		t.Fatal(err)
	}
	return rows
}

// The command fills the indexes of rows written before the index existed,
// with the values the app's model writes (it leaves the app's own rows as
// they are, and Match finds every row); --dry-run writes nothing; --rotate
// moves the global index to a new key version and retires the old one,
// with every row found all along; unreadable rows are reported and do not
// fail the run.
func TestReindex(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		key := newFernet(t)
		useApp(t, db, key, &Profile{})
		const before, after = 40, 5
		const n = before + after
		seedUsers(t, db, before, after)
		// Unfilled, the old rows are not found: each misses its two email
		// lookups, and its phone lookup if it has a phone.
		if missed, want := findsUsers(t, db, n, nil), 2*before+before/2; len(missed) != want {
			t.Fatalf("before the fill, %d lookups miss, want %d", len(missed), want)
		}
		vars := map[string]string{dek.EnvKey: key, "ENVELOPE_DRIVER": string(testdb.DialectOf(db)), "ENVELOPE_DSN": testdb.DSN(t, db)}
		run := func(tty bool, args ...string) (int, string, string) {
			t.Helper()
			code, stdout, stderr := runCLI(t, vars, tty, args...)
			if strings.Contains(stdout+stderr, key) || strings.Contains(stdout+stderr, "example.org") {
				t.Fatalf("%v: the output holds the key or a plaintext:\n%s%s", args, stdout, stderr)
			}
			return code, stdout, stderr
		}
		keysBefore := indexKeyRows(t, db)
		if want := []indexKeyRow{{"app_users.email", 1, false}}; fmt.Sprint(keysBefore) != fmt.Sprint(want) {
			t.Fatalf("index keys before: %v, want %v", keysBefore, want)
		}

		// A dry run counts the rows to fill and writes nothing.
		code, stdout, stderr := run(false, append(rxArgs, "--dry-run")...)
		if code != exitOK || stderr != "" ||
			stdout != "dry run: would write the index values of 40 rows of app_users (45 rows scanned, 0 unreadable); nothing was written\n" {
			t.Fatalf("dry run: exit %d\n%s%s", code, stdout, stderr)
		}
		if v := versions(t, db, "email_idx"); v[""] != before || v["1"] != after {
			t.Errorf("after the dry run, email_idx: %v", v)
		}
		if v := versions(t, db, "phone_idx"); v[""] != n-(after+1)/2 {
			t.Errorf("after the dry run, phone_idx: %v", v)
		}
		if k := indexKeyRows(t, db); fmt.Sprint(k) != fmt.Sprint(keysBefore) {
			t.Errorf("after the dry run, index keys %v", k)
		}

		// The fill, with a progress bar as on a terminal.
		code, stdout, stderr = run(true, append(rxArgs, "--batch-size", "16")...)
		if code != exitOK || stdout != "reindexed app_users: 45 rows scanned, 40 updated, 0 unreadable, 0 old key versions retired\n" {
			t.Fatalf("fill: exit %d\n%s%s", code, stdout, stderr)
		}
		if !strings.Contains(stderr, "\rreindexing [") || !strings.Contains(stderr, "100% 45/45") {
			t.Errorf("no progress bar on stderr: %q", stderr)
		}
		if missed := findsUsers(t, db, n, nil); len(missed) > 0 {
			t.Fatalf("after the fill: %s", strings.Join(missed, "; "))
		}
		if v := versions(t, db, "phone_idx"); v["1"] != (n+1)/2 || v[""] != n/2 {
			t.Errorf("after the fill, phone_idx: %v", v)
		}
		if k := indexKeyRows(t, db); fmt.Sprint(k) != fmt.Sprint(keysBefore) {
			t.Errorf("the fill made index keys %v, want %v: its key names are not the app's", k, keysBefore)
		}
		code, stdout, _ = run(false, rxArgs...)
		if code != exitOK || !strings.Contains(stdout, " 45 rows scanned, 0 updated,") {
			t.Errorf("second fill: exit %d, %s", code, stdout)
		}

		// A dry rotation neither adds a version nor writes a value.
		code, stdout, stderr = run(false, append(rxArgs, "--rotate", "--dry-run")...)
		if code != exitOK || !strings.Contains(stdout, "would write the index values of 0 rows") ||
			!strings.Contains(stdout, "--rotate would also give each global index a new key version") {
			t.Fatalf("dry rotation: exit %d\n%s%s", code, stdout, stderr)
		}
		if v := versions(t, db, "email_idx"); v["1"] != n {
			t.Errorf("after the dry rotation, email_idx: %v", v)
		}
		if k := indexKeyRows(t, db); fmt.Sprint(k) != fmt.Sprint(keysBefore) {
			t.Errorf("after the dry rotation, index keys %v", k)
		}

		// The rotation.
		phonesBefore := valuesOf(t, db, "phone_idx")
		code, stdout, stderr = run(false, append(rxArgs, "--rotate", "--settle", "10ms", "--batch-size", "7")...)
		if code != exitOK || stdout != "reindexed app_users: 90 rows scanned in 2 passes, 45 updated, 0 unreadable, 1 old key version retired\n" {
			t.Fatalf("rotate: exit %d\n%s%s", code, stdout, stderr)
		}
		if !strings.Contains(stderr, "waiting 10ms (--settle)") {
			t.Errorf("rotate: stderr %q", stderr)
		}
		if v := versions(t, db, "email_idx"); v["2"] != n {
			t.Errorf("after the rotation, email_idx: %v", v)
		}
		if want := []indexKeyRow{{"app_users.email", 1, true}, {"app_users.email", 2, false}}; fmt.Sprint(indexKeyRows(t, db)) != fmt.Sprint(want) {
			t.Errorf("after the rotation, index keys %v, want %v", indexKeyRows(t, db), want)
		}
		if p := valuesOf(t, db, "phone_idx"); fmt.Sprint(p) != fmt.Sprint(phonesBefore) {
			t.Error("the rotation changed the per-owner index")
		}
		if missed := findsUsers(t, db, n, nil); len(missed) > 0 {
			t.Fatalf("after the rotation: %s", strings.Join(missed, "; "))
		}

		// A shredded owner's rows are unreadable: reported, not a failure.
		if err := envelope.Shred(db, 3); err != nil {
			t.Fatal(err)
		}
		shredded := 0
		for i := range n {
			if rxOwner(i) == 3 {
				shredded++
			}
		}
		code, stdout, stderr = run(false, rxArgs...)
		if code != exitOK || stdout != fmt.Sprintf("reindexed app_users: 45 rows scanned, 0 updated, %d unreadable, 0 old key versions retired\n", shredded) ||
			stderr != fmt.Sprintf("envelope: warning: %d rows of app_users do not decrypt (shredded owners, or values no key opens): their index values were left as they were, and Match does not return them\n", shredded) {
			t.Errorf("after a shred: exit %d\n%s%s", code, stdout, stderr)
		}
		if missed := findsUsers(t, db, n, func(i int) bool { return rxOwner(i) == 3 }); len(missed) > 0 {
			t.Errorf("after a shred: %s", strings.Join(missed, "; "))
		}
	})
}

// valuesOf returns the values of column in app_users, by id.
func valuesOf(t *testing.T, db *gorm.DB, column string) []sql.NullString {
	t.Helper()
	var vals []sql.NullString
	if err := db.Table("app_users").Order("id").Pluck(column, &vals).Error; err != nil {
		t.Fatal(err)
	}
	return vals
}

// A self-owned model with string keys, a profile table of other names
// than the defaults, and an index tag that names its key: the command
// finds the profile through the profile flags and writes what the app's
// Match finds.
type rxAccount struct {
	ID      uint
	Handle  string `gorm:"uniqueIndex;size:64" envelope:"owner"`
	Wrapped []byte `envelope:"dek"`
}

func (rxAccount) TableName() string { return "rx_accounts" }

type rxMemberBefore struct {
	Handle string `gorm:"primaryKey;size:64" envelope:"owner"`
	Email  string `gorm:"serializer:envelope"`
}

func (rxMemberBefore) TableName() string { return "rx_members" }

type rxMember struct {
	Handle  string  `gorm:"primaryKey;size:64" envelope:"owner"`
	Email   string  `gorm:"serializer:envelope"`
	Lookup  *string `gorm:"size:80" envelope:"index:Email;scope:global;bits:20;name:members.email"`
	ByOwner *string `gorm:"size:80" envelope:"index:email;bits:32;transform:trim,lower"`
}

func (rxMember) TableName() string { return "rx_members" }

func TestReindexSelfOwned(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		key := newFernet(t)
		useApp(t, db, key, &rxAccount{})
		if err := db.AutoMigrate(&rxAccount{}, &rxMemberBefore{}); err != nil {
			t.Fatal(err)
		}
		const n = 12
		handle := func(i int) string { return fmt.Sprintf("member-%02d", i) }
		for i := range n {
			if err := db.Create(&rxMemberBefore{Handle: handle(i), Email: rxEmail(i)}).Error; err != nil {
				t.Fatal(err)
			}
		}
		if err := db.AutoMigrate(&rxMember{}); err != nil {
			t.Fatal(err)
		}
		vars := map[string]string{dek.EnvKey: key}
		code, stdout, stderr := runCLI(t, vars, false, "--driver", string(testdb.DialectOf(db)), "--dsn", testdb.DSN(t, db),
			"--table", "rx_accounts", "--owner-column", "handle", "--dek-column", "wrapped",
			"reindex", "--model-table", "rx_members", "--pk", "handle", "--owner", "handle", "--owner-type", "string", "--source", "email",
			"--index", `lookup=index:Email;scope:global;bits:20;name:members.email`,
			"--index", `by_owner=gorm:"size:80" envelope:"index:email;bits:32;transform:trim,lower"`)
		if code != exitOK || stdout != "reindexed rx_members: 12 rows scanned, 12 updated, 0 unreadable, 0 old key versions retired\n" || stderr != "" {
			t.Fatalf("reindex: exit %d\n%s%s", code, stdout, stderr)
		}
		if k := indexKeyRows(t, db); fmt.Sprint(k) != fmt.Sprint([]indexKeyRow{{"members.email", 1, false}}) {
			t.Errorf("index keys %v, want members.email alone", k)
		}
		for i := range n {
			var got []rxMember
			if err := db.Where(envelope.Match("Email", rxEmail(i))).Find(&got).Error; err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].Handle != handle(i) {
				t.Errorf("Match(Email) of %s: %d rows", handle(i), len(got))
			}
			got = nil
			if err := db.Where(envelope.MatchOwner(handle(i), "ByOwner", " USER"+rxEmail(i)[4:])).Find(&got).Error; err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || got[0].Handle != handle(i) {
				t.Errorf("MatchOwner(ByOwner) of %s: %d rows", handle(i), len(got))
			}
		}
		// The app writes the values the command wrote: rewriting a row's
		// email with the same value leaves both indexes as they were.
		var m rxMember
		if err := db.First(&m, "handle = ?", handle(5)).Error; err != nil {
			t.Fatal(err)
		}
		lookup, byOwner := *m.Lookup, *m.ByOwner
		if err := db.Model(&m).Update("Email", rxEmail(5)).Error; err != nil {
			t.Fatal(err)
		}
		if err := db.First(&m, "handle = ?", handle(5)).Error; err != nil {
			t.Fatal(err)
		}
		if *m.Lookup != lookup || *m.ByOwner != byOwner {
			t.Error("the app's index values differ from the command's")
		}
	})
}

// A run that fails exits 1 with one line naming the command: a column the
// table does not have, a table that is not there, keys that open no DEK.
func TestReindexFailures(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		key := newFernet(t)
		useApp(t, db, key, &Profile{})
		seedUsers(t, db, 3, 2)
		db0 := []string{"--driver", string(testdb.DialectOf(db)), "--dsn", testdb.DSN(t, db)}
		for i, tc := range []struct {
			key  string
			args []string
			want string // stderr, as a regexp
		}{
			{key, []string{"reindex", "--model-table", "app_users", "--owner", "user_id", "--source", "emial", "--index", "email_idx=index:emial;scope:global"}, `^envelope: reindex: app_users has no column "emial" \(--source\)\n$`},
			{key, []string{"reindex", "--model-table", "app_userz", "--owner", "user_id", "--source", "email", "--index", "email_idx=index:email"}, `^envelope: reindex: count .app_userz.: .*app_userz`},
			{newFernet(t), rxArgs, `^envelope: reindex: cannot decrypt: the configured master keys open none of \d+ stored DEKs in profiles`},
		} {
			code, stdout, stderr := runCLI(t, map[string]string{dek.EnvKey: tc.key}, false, append(db0, tc.args...)...)
			if code != exitFail || stdout != "" || strings.Count(stderr, "\n") != 1 || !regexp.MustCompile(tc.want).MatchString(stderr) {
				t.Errorf("#%d: exit %d, stdout %q, stderr %q; want exit 1 and %s", i, code, stdout, stderr, tc.want)
			}
		}
		if v := versions(t, db, "email_idx"); v[""] != 3 {
			t.Errorf("the failed runs wrote index values: %v", v)
		}
	})
}

// A bad command line exits 2 with one line naming the flag at fault,
// before any key is read or the database opened.
func TestReindexUsage(t *testing.T) {
	vars := map[string]string{"ENVELOPE_DRIVER": "sqlite", "ENVELOPE_DSN": ":memory:"}
	idx := "email_idx=index:email;scope:global"
	base := func(more ...string) []string {
		return append([]string{"reindex", "--model-table", "users", "--owner", "id", "--source", "email"}, more...)
	}
	for i, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"reindex", "--owner", "id", "--source", "email", "--index", idx}, "set --model-table"},
		{[]string{"reindex", "--model-table", "users", "--source", "email", "--index", idx}, "set --owner"},
		{[]string{"reindex", "--model-table", "users", "--owner", "id", "--index", idx}, "set --source"},
		{base(), "set --index COLUMN=TAG"},
		{base("--index", "email_idx"), `--index "email_idx": want COLUMN=TAG`},
		{base("--index", "=index:email"), `--index "=index:email": want COLUMN=TAG`},
		{base("--index", "email_idx=scope:global"), `--index email_idx: the tag "scope:global" has no index: option`},
		{base("--index", "email_idx=index:phone"), `--index email_idx: index:phone is not a --source (email)`},
		{base("--index", "email_idx=index:email;bits:300"), `--index email_idx: bits:300: the length must be 1 to 256`},
		{base("--index", "email_idx=index:email;bits:x"), `--index email_idx: bits:x: the length must be 1 to 256`},
		{base("--index", "email_idx=index:email;transform:upper"), `--index email_idx: blind index transform "upper": unknown step "upper"`},
		{base("--index", "email_idx=index:email;scope:team"), `--index email_idx: scope:team: the scope is owner or global`},
		{base("--index", "email_idx=index:email;size:80"), `--index email_idx: unknown option "size" (index, scope, bits, transform, name)`},
		{base("--index", idx, "--index", idx), `--index email_idx: the column is already given as --index`},
		{base("--index", "email=index:email"), `--index email: the column is already given as --source`},
		{base("--index", "id=index:email"), `--index id: the column is already given as --pk`},
		{base("--source", "email", "--index", idx), `--source email is already given as --source`},
		{base("--source", "phone", "--index", idx), `--source phone: no --index is of it`},
		{base("--source", "a;b", "--index", idx), `--source "a;b": a name cannot hold`},
		{base("--source", ",", "--index", idx), `--source: empty name`},
		{base("--index", idx, "--pk-type", "uuid"), `invalid value "uuid" for flag -pk-type: want int or string`},
		{base("--index", idx, "--pk-type", "int", "--owner-type", "string"), `--owner is the primary key id, so --pk-type int and --owner-type string must agree`},
		{base("--index", idx, "--settle", "-1s"), `--settle -1s is negative`},
		{base("--index", idx, "--owner-column", "-"), `--owner-column is -`},
		{base("--index", idx, "--table", "users"), `--model-table users is the profile table (--table)`},
		{base("--index", "email_idx=index:email;bits:16", "--rotate"), `--rotate: no --index is global (scope:global)`},
	} {
		code, stdout, stderr := runCLI(t, vars, false, tc.args...)
		if code != exitUsage || stdout != "" || strings.Count(stderr, "\n") != 1 ||
			!strings.HasPrefix(stderr, "envelope: reindex: ") || !strings.Contains(stderr, tc.want) {
			t.Errorf("#%d %v: exit %d, stdout %q, stderr %q; want exit 2 and one line with %q", i, tc.args, code, stdout, stderr, tc.want)
		}
	}
}

// The struct the command makes is the model the flags describe: tags in
// GORM's and the plugin's syntax, name: added unless given.
func TestReindexStruct(t *testing.T) {
	r := reindexFlags{table: "users", pk: "id", owner: "user_id", pkType: colType{name: "int"}, ownerType: colType{name: "string", set: true},
		sources: listFlag{"email", "phone_number"},
		indexes: listFlag{"email_idx=index:Email;scope:global;bits:12;transform:lower", "phone_idx=index:PhoneNumber;name:p\\;q"}}
	s, err := r.spec("profiles", "user_id")
	if err != nil {
		t.Fatal(err)
	}
	typ := s.structType()
	want := []string{
		`PK int64 gorm:"primaryKey;column:id"`,
		`Owner string gorm:"column:user_id" envelope:"owner"`,
		`S0 string gorm:"column:email;serializer:envelope"`,
		`S1 string gorm:"column:phone_number;serializer:envelope"`,
		`I0 *string gorm:"column:email_idx" envelope:"index:S0;bits:12;scope:global;transform:lower;name:users.email"`,
		`I1 *string gorm:"column:phone_idx" envelope:"index:S1;name:p\\;q"`,
	}
	if typ.NumField() != len(want) {
		t.Fatalf("%d fields, want %d", typ.NumField(), len(want))
	}
	for i, w := range want {
		f := typ.Field(i)
		if got := fmt.Sprintf("%s %s %s", f.Name, f.Type, f.Tag); got != w {
			t.Errorf("field %d: got %s, want %s", i, got, w)
		}
	}
	if p, ok := s.profile().(*stringOwnerProfile); !ok || p == nil {
		t.Errorf("profile %T, want *stringOwnerProfile", s.profile())
	}
}

func cmdUsers(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 4 {
		ts.Fatalf("usage: users DB BEFORE AFTER VAR")
	}
	before, err := strconv.Atoi(args[1])
	ts.Check(err)
	after, err := strconv.Atoi(args[2])
	ts.Check(err)
	keys, err := dek.ParseKeyring(ts.Getenv(args[3]))
	ts.Check(err)
	db, err := gorm.Open(sqlite.Open(ts.MkAbs(args[0])), &gorm.Config{Logger: logger.Discard})
	ts.Check(err)
	sqlDB, _ := db.DB()
	defer sqlDB.Close()
	ts.Check(db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}, Logger: slog.New(slog.DiscardHandler)})))
	ts.Check(db.AutoMigrate(&Profile{}, &rxUserBefore{}))
	for i := range before {
		ts.Check(db.Create(&rxUserBefore{UserID: rxOwner(i), Email: rxEmail(i)}).Error)
	}
	ts.Check(db.AutoMigrate(&rxUser{}))
	for i := before; i < before+after; i++ {
		ts.Check(db.Create(&rxUser{UserID: rxOwner(i), Email: rxEmail(i)}).Error)
	}
}

// A rotation interrupted while it waits --settle exits 1, says how to go
// on, and leaves every row found; the next run, without --rotate,
// finishes it.
func TestReindexInterrupted(t *testing.T) {
	testdb.ForEach(t, func(t *testing.T, db *gorm.DB) {
		t.Parallel()
		key := newFernet(t)
		useApp(t, db, key, &Profile{})
		const n = 20
		seedUsers(t, db, n/2, n/2)
		vars := map[string]string{dek.EnvKey: key, "ENVELOPE_DRIVER": string(testdb.DialectOf(db)), "ENVELOPE_DSN": testdb.DSN(t, db)}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			// Once the first pass has moved every row to version 2, the
			// command waits --settle: interrupt it there.
			for ctx.Err() == nil {
				var moved int64
				if db.Table("app_users").Where("email_idx LIKE ?", "2:%").Count(&moved).Error == nil && moved == n {
					cancel()
					return
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
		var stdout, stderr bytes.Buffer
		code := run(ctx, append(rxArgs, "--rotate", "--settle", "1m"), &env{stdout: &stdout, stderr: &stderr,
			lookup: func(k string) (string, bool) { v, ok := vars[k]; return v, ok }})
		if code != exitFail || stdout.String() != "wrote the index values of 20 rows of app_users before the error\n" ||
			!strings.HasSuffix(stderr.String(), "\nenvelope: reindex: interrupted (the values written are kept and no row stops matching; run the same command again to go on)\n") {
			t.Fatalf("interrupted: exit %d\n%s%s", code, stdout.String(), stderr.String())
		}
		if want := []indexKeyRow{{"app_users.email", 1, false}, {"app_users.email", 2, false}}; fmt.Sprint(indexKeyRows(t, db)) != fmt.Sprint(want) {
			t.Errorf("after the interruption, index keys %v, want %v", indexKeyRows(t, db), want)
		}
		if missed := findsUsers(t, db, n, nil); len(missed) > 0 {
			t.Fatalf("after the interruption: %s", strings.Join(missed, "; "))
		}
		code, out, errs := runCLI(t, vars, false, append(rxArgs, "--settle", "10ms")...)
		if code != exitOK || out != "reindexed app_users: 40 rows scanned in 2 passes, 0 updated, 0 unreadable, 1 old key version retired\n" {
			t.Fatalf("the run after: exit %d\n%s%s", code, out, errs)
		}
		if want := []indexKeyRow{{"app_users.email", 1, true}, {"app_users.email", 2, false}}; fmt.Sprint(indexKeyRows(t, db)) != fmt.Sprint(want) {
			t.Errorf("after the rotation, index keys %v, want %v", indexKeyRows(t, db), want)
		}
		if missed := findsUsers(t, db, n, nil); len(missed) > 0 {
			t.Fatalf("after the rotation: %s", strings.Join(missed, "; "))
		}
	})
}

// With --kms-url the command opens the DEKs, and seals a new index key
// version, with the KMS key, and closes it when done.
func TestReindexKMS(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	key := newFernet(t)
	useApp(t, db, key, &Profile{})
	seedUsers(t, db, 6, 0)
	kms := &testKMS{}
	vars := map[string]string{"ENVELOPE_DRIVER": "sqlite", "ENVELOPE_DSN": testdb.DSN(t, db), "ENVELOPE_KMS_URL": "test://" + key}
	code, stdout, stderr := runWith(t, kms.ext(), vars, false, append(rxArgs, "--rotate", "--settle", "0")...)
	if code != exitOK || stdout != "reindexed app_users: 12 rows scanned in 2 passes, 6 updated, 0 unreadable, 1 old key version retired\n" {
		t.Fatalf("reindex: exit %d\n%s%s", code, stdout, stderr)
	}
	if strings.Contains(stdout+stderr, key) {
		t.Error("the output holds the key")
	}
	kms.balanced(t)
	if missed := findsUsers(t, db, 6, nil); len(missed) > 0 {
		t.Fatalf("after the rotation: %s", strings.Join(missed, "; "))
	}
	// In the core build, --kms-url is refused before anything is read.
	code, _, stderr = runCLI(t, vars, false, rxArgs...)
	if code != exitUsage || !strings.HasPrefix(stderr, "envelope: this build has no KMS support") {
		t.Errorf("core build: exit %d, stderr %q", code, stderr)
	}
}
