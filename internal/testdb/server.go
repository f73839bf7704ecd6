package testdb

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"sync"
	"testing"

	"gorm.io/gorm"
	"gorm.io/gorm/logger"
)

// server is a database server found through an environment variable. It is probed once
// per process, so a server that is down costs one connect timeout, not one per test.
type server struct {
	dialect Dialect
	env     string // variable holding the DSN
	def     string // DSN used when env is unset or empty
	// prepare adjusts the DSN before use (for example adds a short connect timeout).
	prepare func(dsn string) (string, error)

	once  sync.Once
	base  string   // prepared DSN
	admin *gorm.DB // process-wide handle that creates and drops test databases
	bad   error    // the DSN cannot be used: fail, wherever the test runs
	down  error    // the server cannot be reached: skip, or fail under CI
}

// connect returns the admin handle and the prepared base DSN, or ends t if the server
// cannot be used.
func (s *server) connect(t testing.TB) (*gorm.DB, string) {
	t.Helper()
	s.once.Do(func() {
		dsn := os.Getenv(s.env)
		if dsn == "" {
			dsn = s.def
		}
		if s.base, s.bad = s.prepare(dsn); s.bad != nil {
			return
		}
		// The admin handle is shared by every test of the process and never closed.
		s.admin, s.down = gorm.Open(dialector(s.dialect, s.base), &gorm.Config{Logger: logger.Discard})
	})
	if s.bad != nil {
		t.Fatalf("testdb: %s: bad %s: %v", s.dialect, s.env, s.bad)
	}
	if s.down != nil {
		unreachable(t, string(s.dialect), s.env, s.down)
	}
	return s.admin, s.base
}

// uniqueName returns a fresh name for a schema or database, safe unquoted in SQL.
func uniqueName() string {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		panic(fmt.Sprintf("testdb: crypto/rand: %v", err))
	}
	return "t_" + hex.EncodeToString(b)
}
