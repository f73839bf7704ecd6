package cli

import (
	"bytes"
	"context"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
	"gorm.io/driver/sqlite"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

func TestMain(m *testing.M) {
	testscript.Main(m, map[string]func(){
		"envelope": func() { os.Exit(Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr, Extensions{})) },
	})
}

// TestScripts runs the scripts in testdata/*.txt: the envelope command on
// SQLite database files. Besides testscript's own commands they have:
//
//	genkey VAR                 set VAR to a new master key
//	seed DB N VAR|empty|shredded
//	                           add N profiles to the SQLite file DB with DEKs
//	                           under the key in $VAR (or without a DEK, or shredded)
//	subst FROM TO              copy FROM to TO, replacing @VAR@ by $VAR
//	envvar FILE NAME VAR       set VAR to the value of NAME in the env file FILE
//	perm FILE MODE             the file's permission bits are MODE (octal)
//	copydek DB FROM TO         copy the DEK column of owner FROM's profile into
//	                           owner TO's, in the SQLite file DB
//	users DB BEFORE AFTER VAR  write BEFORE users to app_users in DB through the
//	                           plugin, under the key in $VAR, then add the
//	                           blind index columns, then write AFTER users
//	                           with the indexed model (reindex_test.go)
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"genkey": cmdGenkey,
			"seed":   cmdSeed,
			"subst":  cmdSubst,
			"envvar": cmdEnvvar,
			"perm":   cmdPerm,
			"users":  cmdUsers,

			"copydek": cmdCopyDEK,
		},
		Setup: func(e *testscript.Env) error {
			// Keys come only from what a script sets.
			e.Setenv(dek.EnvKey, "")
			e.Setenv(dek.EnvKeyPrevious, "")
			e.Setenv("ENVELOPE_DRIVER", "")
			e.Setenv("ENVELOPE_DSN", "")
			return nil
		},
	})
}

// Profile is the contract's profile model.
type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	EncryptedDEK []byte `envelope:"dek"`
}

func cmdGenkey(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: genkey VAR")
	}
	k, err := dek.GenerateKey()
	ts.Check(err)
	ts.Setenv(args[0], k)
}

func cmdSeed(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: seed DB N VAR|empty|shredded")
	}
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	db, err := gorm.Open(sqlite.Open(ts.MkAbs(args[0])), &gorm.Config{Logger: logger.Discard})
	ts.Check(err)
	sqlDB, _ := db.DB()
	defer sqlDB.Close()
	ts.Check(db.AutoMigrate(&Profile{}))
	var maxOwner uint
	ts.Check(db.Model(&Profile{}).Select("coalesce(max(user_id), 0)").Scan(&maxOwner).Error)
	var keys *dek.Keyring
	if args[2] != "empty" && args[2] != "shredded" {
		keys, err = dek.ParseKeyring(ts.Getenv(args[2]))
		ts.Check(err)
	}
	for i := 1; i <= n; i++ {
		p := Profile{UserID: maxOwner + uint(i)}
		switch args[2] {
		case "empty":
		case "shredded":
			p.EncryptedDEK = dek.Tombstone()
		default:
			d, err := dek.NewDEK()
			ts.Check(err)
			p.EncryptedDEK, err = keys.Seal(context.Background(), d)
			ts.Check(err)
		}
		ts.Check(db.Create(&p).Error)
	}
}

func cmdCopyDEK(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: copydek DB FROM TO")
	}
	db, err := gorm.Open(sqlite.Open(ts.MkAbs(args[0])), &gorm.Config{Logger: logger.Discard})
	ts.Check(err)
	sqlDB, _ := db.DB()
	defer sqlDB.Close()
	var from Profile
	ts.Check(db.Where("user_id = ?", args[1]).First(&from).Error)
	ts.Check(db.Model(&Profile{}).Where("user_id = ?", args[2]).Update("encrypted_dek", from.EncryptedDEK).Error)
}

func cmdSubst(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: subst FROM TO")
	}
	s := ts.ReadFile(args[0])
	for {
		i := strings.Index(s, "@")
		if i < 0 {
			break
		}
		j := strings.Index(s[i+1:], "@")
		if j < 0 {
			break
		}
		name := s[i+1 : i+1+j]
		s = s[:i] + ts.Getenv(name) + s[i+2+j:]
	}
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), []byte(s), 0o644))
}

func cmdEnvvar(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 3 {
		ts.Fatalf("usage: envvar FILE NAME VAR")
	}
	vars, err := readEnvFile(ts.MkAbs(args[0]))
	ts.Check(err)
	v, ok := vars[args[1]]
	if !ok {
		ts.Fatalf("%s does not set %s", args[0], args[1])
	}
	ts.Setenv(args[2], v)
}

func cmdPerm(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: perm FILE MODE")
	}
	want, err := strconv.ParseUint(args[1], 8, 32)
	ts.Check(err)
	fi, err := os.Stat(ts.MkAbs(args[0]))
	ts.Check(err)
	if got := uint64(fi.Mode().Perm()); (got == want) == neg {
		ts.Fatalf("%s has mode %#o, want %s%#o", args[0], got, map[bool]string{true: "not ", false: ""}[neg], want)
	}
}

// runCLI runs the core build of the command in-process with the given
// environment.
func runCLI(t *testing.T, vars map[string]string, tty bool, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	return runWith(t, Extensions{}, vars, tty, args...)
}

// runWith runs the command in-process as a build with ext.
func runWith(t *testing.T, ext Extensions, vars map[string]string, tty bool, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = run(context.Background(), args, &env{
		stdout: &out,
		stderr: &errb,
		lookup: func(k string) (string, bool) { v, ok := vars[k]; return v, ok },
		tty:    tty,
		ext:    ext,
	})
	return code, out.String(), errb.String()
}

func TestErrorsAreOneLine(t *testing.T) {
	for _, args := range [][]string{
		{"bogus"},
		{"status"},
		{"--driver", "nope", "--dsn", "x", "status"},
		{"rotate", "--resume", "--new-key", "x"},
		{"keygen", "extra"},
	} {
		code, _, stderr := runCLI(t, map[string]string{dek.EnvKey: "short"}, false, args...)
		if code == 0 {
			t.Errorf("%v: exit 0", args)
		}
		if !strings.HasPrefix(stderr, "envelope: ") || strings.Count(stderr, "\n") != 1 {
			t.Errorf("%v: stderr %q, want one line prefixed envelope:", args, stderr)
		}
		if strings.Contains(stderr, "envelope: envelope:") {
			t.Errorf("%v: doubled prefix: %q", args, stderr)
		}
	}
}

// A bad --driver, or no --dsn, is a bad command line (exit 2) for every
// command that uses the database, and is found before the keys are read.
func TestDatabaseFlagsBeforeKeys(t *testing.T) {
	for _, cmd := range []string{"status", "verify", "backfill", "rotate", "reindex"} {
		for _, tc := range []struct {
			args []string
			want string
		}{
			{[]string{"--driver", "sqlite3", "--dsn", "app.db"}, `envelope: unknown --driver "sqlite3": want sqlite, postgres or mysql` + "\n"},
			{[]string{"--dsn", "app.db"}, "envelope: no database driver: set --driver (or ENVELOPE_DRIVER) to sqlite, postgres or mysql\n"},
			{[]string{"--driver", "postgres"}, "envelope: no database: set --dsn (or ENVELOPE_DSN)\n"},
		} {
			for _, vars := range []map[string]string{{}, {dek.EnvKey: "short"}} {
				code, stdout, stderr := runCLI(t, vars, false, append(tc.args, cmd)...)
				if code != exitUsage || stderr != tc.want || stdout != "" {
					t.Errorf("%v %s with %d keys: exit %d, stdout %q, stderr %q; want exit 2, stderr %q", tc.args, cmd, len(vars), code, stdout, stderr, tc.want)
				}
			}
		}
	}
}

// status exits 0 when a DEK opens under no configured key, and says so on
// stderr; verify exits 1. Both exit 1 when they cannot read the table.
func TestStatusExitCodes(t *testing.T) {
	db := testdb.Open(t, testdb.SQLite)
	lost := newFernet(t)
	seedServer(t, db, lost, 3)
	vars := map[string]string{"ENVELOPE_DRIVER": "sqlite", "ENVELOPE_DSN": testdb.DSN(t, db), dek.EnvKey: newFernet(t)}
	code, stdout, stderr := runCLI(t, vars, false, "status")
	if code != exitOK || !regexp.MustCompile(`none \(undecryptable\) +3\n`).MatchString(stdout) ||
		stderr != "envelope: warning: 3 DEKs open under no configured key; envelope verify names them and exits 1\n" {
		t.Errorf("status: exit %d\nstdout %s\nstderr %q", code, stdout, stderr)
	}
	if code, _, stderr := runCLI(t, vars, false, "verify"); code != exitFail || !strings.HasSuffix(stderr, "envelope: verify: 3 DEKs could not be opened\n") {
		t.Errorf("verify: exit %d\nstderr %q", code, stderr)
	}
	for _, cmd := range []string{"status", "verify"} {
		if code, _, stderr := runCLI(t, vars, false, "--table", "missing", cmd); code != exitFail || !strings.HasPrefix(stderr, "envelope: "+cmd+": ") {
			t.Errorf("%s on a missing table: exit %d, stderr %q", cmd, code, stderr)
		}
	}
}
