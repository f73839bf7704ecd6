package cli

import (
	"errors"
	"io/fs"
	"net/url"
	"os"
	"runtime"
	"strings"
)

// checkSQLite refuses a SQLite DSN whose database file does not exist: the
// driver would create an empty database there, and no command of this tool
// is meant to create one. A database in memory has no file and is let
// through (it is empty in a process of its own).
func checkSQLite(dsn string) error {
	path, memory := sqliteFile(dsn)
	if memory {
		return nil
	}
	fi, err := os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return usagef("no SQLite database at %q: no such file (check --dsn or ENVELOPE_DSN; envelope never creates a database)", path)
	case err != nil:
		var pe *fs.PathError
		if errors.As(err, &pe) {
			err = pe.Err
		}
		return usagef("SQLite database at %q: %v (check --dsn or ENVELOPE_DSN)", path, err)
	case fi.IsDir():
		return usagef("%q is a directory, not a SQLite database (check --dsn or ENVELOPE_DSN)", path)
	}
	return nil
}

// sqliteFile returns the path of the database file a SQLite DSN names, as
// github.com/mattn/go-sqlite3 and SQLite read it: a file name, or a "file:"
// URI (file:PATH or file://[localhost]/PATH, percent-escaped), each
// optionally followed by "?" and parameters. memory is true for a database
// no file holds: ":memory:", an empty name (a temporary database), a URI
// with mode=memory, or the memdb VFS (vfs=memdb).
func sqliteFile(dsn string) (path string, memory bool) {
	name, query := dsn, ""
	// go-sqlite3 reads its parameters after a '?' that is not the first
	// byte, and uses the name before it unless the name is a URI.
	if i := strings.IndexByte(dsn, '?'); i >= 1 {
		name, query = dsn[:i], dsn[i+1:]
	}
	params, _ := url.ParseQuery(query) // the driver reports a malformed query
	if params.Get("vfs") == "memdb" {
		return "", true
	}
	if uri, ok := strings.CutPrefix(dsn, "file:"); ok {
		// SQLite reads the URI: a fragment ends it, then parameters.
		uri, _, _ = strings.Cut(uri, "#")
		uri, query, _ = strings.Cut(uri, "?")
		if uriParams, _ := url.ParseQuery(query); uriParams.Get("mode") == "memory" {
			return "", true
		}
		if rest, ok := strings.CutPrefix(uri, "//"); ok {
			// file://localhost/PATH or file:///PATH
			if i := strings.IndexByte(rest, '/'); i >= 0 {
				uri = rest[i:]
			} else {
				uri = ""
			}
		}
		if p, err := url.PathUnescape(uri); err == nil {
			uri = p
		}
		// file:///C:/app.db names C:/app.db on Windows.
		if runtime.GOOS == "windows" && len(uri) >= 3 && uri[0] == '/' && uri[2] == ':' {
			uri = uri[1:]
		}
		name = uri
	}
	if name == "" || name == ":memory:" {
		return "", true
	}
	return name, false
}
