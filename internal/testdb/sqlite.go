package testdb

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
)

var sqliteSeq atomic.Uint64

// newSQLite creates an in-memory SQLite database private to t and returns its DSN.
//
// The database uses SQLite's memdb VFS: every connection of the process that opens the same
// "/name" shares one database, which lives while at least one connection is open. Unlike a
// shared-cache ":memory:" database (mode=memory&cache=shared), whose table locks fail at once
// with "database table is locked" whatever the busy timeout, memdb uses ordinary database
// locks, so concurrent writers wait up to _busy_timeout as they would on a file.
func newSQLite(t testing.TB) string {
	t.Helper()
	name := fmt.Sprintf("/envelope-%d-%s", sqliteSeq.Add(1), sanitize(t.Name()))
	dsn := "file:" + name + "?vfs=memdb&_busy_timeout=5000&_foreign_keys=1"

	// Hold one connection for the whole test so the database outlives any handle on it.
	keeper, err := sql.Open("sqlite3", dsn)
	if err != nil {
		t.Fatalf("testdb: sqlite: %v", err)
	}
	conn, err := keeper.Conn(context.Background())
	if err == nil {
		err = conn.PingContext(context.Background())
	}
	if err != nil {
		keeper.Close()
		t.Fatalf("testdb: sqlite: %v", err)
	}
	t.Cleanup(func() {
		conn.Close()
		keeper.Close()
	})
	return dsn
}

// sanitize keeps a test name readable in a DSN: letters, digits, '-' and '_', at most 40.
func sanitize(name string) string {
	s := strings.Map(func(r rune) rune {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_':
			return r
		}
		return '_'
	}, name)
	if len(s) > 40 {
		s = s[:40]
	}
	return s
}
