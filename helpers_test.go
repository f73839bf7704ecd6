package envelope_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorm-envelope/envelope"
	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/bound"
	"github.com/gorm-envelope/envelope/internal/testdb"
	"github.com/gorm-envelope/envelope/internal/token"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// Profile is the app's profile model of the tests.
type Profile struct {
	ID           uint
	UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
	Nickname     string `gorm:"default:''"`
	EncryptedDEK []byte `envelope:"dek"`
}

// Credential is a model with encrypted fields of every supported type.
type Credential struct {
	ID       uint
	UserID   uint `envelope:"owner"`
	Facility string
	Password string  `gorm:"serializer:envelope"`
	APIKey   *string `gorm:"serializer:envelope"`
	Blob     []byte  `gorm:"serializer:envelope"`
}

// Note has no encrypted fields.
type Note struct {
	ID   uint
	Text string
}

func newKeys(t testing.TB) *dek.Keyring {
	t.Helper()
	k, err := dek.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	r, err := dek.ParseKeyring(k)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// setup registers the plugin on db and migrates the test models.
func setup(t testing.TB, db *gorm.DB, keys *dek.Keyring, cfg ...envelope.Config) *envelope.Plugin {
	t.Helper()
	c := envelope.Config{Keys: keys, Profile: &Profile{}}
	if len(cfg) > 0 {
		c = cfg[0]
		c.Keys, c.Profile = keys, &Profile{}
	}
	if c.Format == envelope.FormatFernet {
		c.Format = testFormat()
	}
	p := envelope.New(c)
	if err := db.Use(p); err != nil {
		t.Fatalf("db.Use: %v", err)
	}
	if err := db.AutoMigrate(&Profile{}, &Credential{}, &Note{}); err != nil {
		t.Fatalf("AutoMigrate: %v", err)
	}
	return p
}

// testFormat is the format the suite's plugins write by default:
// ENVELOPE_TEST_FORMAT=bound runs the tests that do not name a format on
// bound values (CI runs the root package so once).
func testFormat() envelope.Format {
	if os.Getenv("ENVELOPE_TEST_FORMAT") == "bound" {
		return envelope.FormatBound
	}
	return envelope.FormatFernet
}

// sealedText reports whether s, a stored value, is a value in the format
// the suite writes (testFormat): a Fernet token, or a bound value's text.
func sealedText(s string) bool {
	if testFormat() == envelope.FormatBound {
		return bound.IsBound([]byte(s))
	}
	return strings.HasPrefix(s, "gAAAAA") && token.LooksLikeString(s)
}

var sealedPattern = regexp.MustCompile(`g[A-Za-z0-9_-]{50,}=*`)

// sealedIn reports whether text (a SQL log, say) holds a value in the
// format the suite writes.
func sealedIn(text string) bool {
	for _, s := range sealedPattern.FindAllString(text, -1) {
		if sealedText(s) {
			return true
		}
	}
	return false
}

// profileRow is the binding of owner's DEK in the tests' profiles table:
// OpenBound with it opens both DEK layouts.
func profileRow[T ~uint | ~int64](owner T) dek.Binding {
	return dek.Binding{Table: "profiles", Owner: fmt.Sprint(owner)}
}

// fernetOnly skips a test about the Fernet format itself (its layout, its
// limitations, Python reading it) in the bound-format run of the suite.
func fernetOnly(t testing.TB) {
	t.Helper()
	if testFormat() != envelope.FormatFernet {
		t.Skip("about Fernet tokens: the suite runs with ENVELOPE_TEST_FORMAT=bound")
	}
}

// sqlLog is a GORM logger at Info level that keeps every line.
type sqlLog struct {
	mu    sync.Mutex
	buf   bytes.Buffer
	inner logger.Interface
}

func newSQLLog() *sqlLog {
	l := &sqlLog{}
	l.inner = logger.New(log.New(lockedWriter{l}, "", 0), logger.Config{LogLevel: logger.Info, Colorful: false})
	return l
}

type lockedWriter struct{ l *sqlLog }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.l.mu.Lock()
	defer w.l.mu.Unlock()
	return w.l.buf.Write(p)
}

func (l *sqlLog) LogMode(level logger.LogLevel) logger.Interface { return l }
func (l *sqlLog) Info(ctx context.Context, s string, a ...any)   { l.inner.Info(ctx, s, a...) }
func (l *sqlLog) Warn(ctx context.Context, s string, a ...any)   { l.inner.Warn(ctx, s, a...) }
func (l *sqlLog) Error(ctx context.Context, s string, a ...any)  { l.inner.Error(ctx, s, a...) }
func (l *sqlLog) Trace(ctx context.Context, begin time.Time, fc func() (string, int64), err error) {
	l.inner.Trace(ctx, begin, fc, err)
}

func (l *sqlLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func (l *sqlLog) Reset() {
	l.mu.Lock()
	l.buf.Reset()
	l.mu.Unlock()
}

// count returns how many logged SQL statements contain all of subs.
func (l *sqlLog) count(subs ...string) int {
	n := 0
	for _, line := range strings.Split(l.String(), "\n") {
		ok := strings.Contains(line, "SELECT") || strings.Contains(line, "INSERT") || strings.Contains(line, "UPDATE")
		for _, s := range subs {
			ok = ok && strings.Contains(line, s)
		}
		if ok {
			n++
		}
	}
	return n
}

// rawColumn returns the stored value of a column of one row, bypassing the plugin.
func rawColumn(t testing.TB, db *gorm.DB, table, column string, id uint) (string, bool) {
	t.Helper()
	var v *string
	row := db.Session(&gorm.Session{NewDB: true, Logger: logger.Discard}).Table(table).Select(column).Where("id = ?", id).Row()
	if err := row.Scan(&v); err != nil {
		t.Fatalf("raw %s.%s id %d: %v", table, column, id, err)
	}
	if v == nil {
		return "", false
	}
	return *v, true
}

func ptr[T any](v T) *T { return &v }

// vectors is shared/testdata/fernet_vectors.json.
type vectors struct {
	MasterKey      string `json:"master_key"`
	WrongMasterKey string `json:"wrong_master_key"`
	Owners         []struct {
		Owner        uint   `json:"owner"`
		DEK          string `json:"dek"`
		EncryptedDEK string `json:"encrypted_dek"`
		Fields       []struct {
			Plaintext string `json:"plaintext"`
			Token     string `json:"token"`
		} `json:"fields"`
	} `json:"owners"`
	Tampered   string `json:"tampered_token_owner_1"`
	CrossOwner string `json:"token_under_owner_2_dek_claimed_by_owner_1"`
}

func loadVectors(t testing.TB) *vectors {
	t.Helper()
	path := filepath.Join("..", "shared", "testdata", "fernet_vectors.json")
	b, err := os.ReadFile(path)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("vectors: %v", err)
		}
		t.Skipf("vectors: %v", err)
	}
	var v vectors
	if err := json.Unmarshal(b, &v); err != nil {
		t.Fatal(err)
	}
	return &v
}

// slogCapture is a slog handler that keeps every record as text.
type slogCapture struct {
	mu    sync.Mutex
	lines []string
}

func (c *slogCapture) Enabled(context.Context, slog.Level) bool { return true }
func (c *slogCapture) Handle(_ context.Context, r slog.Record) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s", r.Level, r.Message)
	r.Attrs(func(a slog.Attr) bool { fmt.Fprintf(&b, " %s=%v", a.Key, a.Value); return true })
	c.mu.Lock()
	c.lines = append(c.lines, b.String())
	c.mu.Unlock()
	return nil
}
func (c *slogCapture) WithAttrs([]slog.Attr) slog.Handler { return c }
func (c *slogCapture) WithGroup(string) slog.Handler      { return c }
func (c *slogCapture) Lines() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.lines...)
}

var _ = testdb.SQLite

func slogLogger(h *slogCapture) *slog.Logger { return slog.New(h) }
