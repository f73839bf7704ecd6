package cli

import "testing"

// sqliteFile reads a SQLite DSN as go-sqlite3 and SQLite do.
func TestSQLiteFile(t *testing.T) {
	for _, tc := range []struct {
		dsn, path string
		memory    bool
	}{
		{"app.db", "app.db", false},
		{"/var/lib/app/app.db", "/var/lib/app/app.db", false},
		{"app.db?_busy_timeout=5000&_fk=1", "app.db", false},
		{"?odd", "?odd", false}, // a leading '?' is part of the name
		{"my app#1.db", "my app#1.db", false},
		{"file:app.db", "app.db", false},
		{"file:app.db?mode=ro&cache=shared", "app.db", false},
		{"file:data/my%20app.db#frag", "data/my app.db", false},
		{"file:app.db?mode=rw#frag", "app.db", false},
		{"file:app.db#frag?mode=memory", "app.db", false}, // the '?' is in the fragment
		{"file:///var/lib/app.db", "/var/lib/app.db", false},
		{"file://localhost/var/lib/app.db?cache=private", "/var/lib/app.db", false},
		{"file:/abs.db", "/abs.db", false},
		{"mode=memory.db?mode=memory", "mode=memory.db", false}, // not a URI: mode is not read
		{":memory:", "", true},
		{":memory:?_busy_timeout=1", "", true},
		{"file::memory:", "", true},
		{"file::memory:?cache=shared", "", true},
		{"file:shared?mode=memory&cache=shared", "", true},
		{"file:/envelope-1?vfs=memdb&_busy_timeout=5000", "", true},
		{"app.db?vfs=memdb", "", true},
		{"file:", "", true},
		{"file:?mode=ro", "", true},
	} {
		path, memory := sqliteFile(tc.dsn)
		if path != tc.path || memory != tc.memory {
			t.Errorf("sqliteFile(%q) = %q, %v; want %q, %v", tc.dsn, path, memory, tc.path, tc.memory)
		}
	}
}
