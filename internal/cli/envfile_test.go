package cli

import (
	"os"
	"path/filepath"
	"testing"
)

func TestSetEnvLines(t *testing.T) {
	set := [][2]string{{"DEK_ENCRYPTION_KEY", "new"}, {"DEK_ENCRYPTION_KEY_PREVIOUS", "old1,old2"}}
	for i, tc := range []struct{ in, want string }{
		{"", "DEK_ENCRYPTION_KEY=new\nDEK_ENCRYPTION_KEY_PREVIOUS=old1,old2\n"},
		{"A=1\nDEK_ENCRYPTION_KEY=old1\n", "A=1\nDEK_ENCRYPTION_KEY=new\nDEK_ENCRYPTION_KEY_PREVIOUS=old1,old2\n"},
		// No final newline; export prefix and quotes; CRLF line endings kept.
		{"# c\nexport DEK_ENCRYPTION_KEY=\"old1\"", "# c\nexport DEK_ENCRYPTION_KEY=new\nDEK_ENCRYPTION_KEY_PREVIOUS=old1,old2\n"},
		{"DEK_ENCRYPTION_KEY=old1\r\nB=2\r\n", "DEK_ENCRYPTION_KEY=new\r\nB=2\r\nDEK_ENCRYPTION_KEY_PREVIOUS=old1,old2\n"},
		// Every setting of a variable gets the new value; similar names are left alone.
		{"DEK_ENCRYPTION_KEY_PREVIOUS=x\nDEK_ENCRYPTION_KEY=a\nDEK_ENCRYPTION_KEY=b\nDEK_ENCRYPTION_KEYS=z\n",
			"DEK_ENCRYPTION_KEY_PREVIOUS=old1,old2\nDEK_ENCRYPTION_KEY=new\nDEK_ENCRYPTION_KEY=new\nDEK_ENCRYPTION_KEYS=z\n"},
		// Commented-out settings stay comments.
		{"#DEK_ENCRYPTION_KEY=zzz\n", "#DEK_ENCRYPTION_KEY=zzz\nDEK_ENCRYPTION_KEY=new\nDEK_ENCRYPTION_KEY_PREVIOUS=old1,old2\n"},
	} {
		if got := string(setEnvLines([]byte(tc.in), set)); got != tc.want {
			t.Errorf("#%d: got %q, want %q", i, got, tc.want)
		}
	}
}

func TestParseEnvLine(t *testing.T) {
	for i, tc := range []struct{ line, name, val string }{
		{"A=1", "A", "1"},
		{"  export A = 'x y' ", "A", "x y"},
		{`A="q"`, "A", "q"},
		{"A=v # comment", "A", "v"},
		{"A=", "A", ""},
	} {
		name, val, ok := parseEnvLine(tc.line)
		if !ok || name != tc.name || val != tc.val {
			t.Errorf("#%d: got %q %q %v, want %q %q", i, name, val, ok, tc.name, tc.val)
		}
	}
	for _, line := range []string{"", "# A=1", "junk"} {
		if _, _, ok := parseEnvLine(line); ok {
			t.Errorf("%q parsed as a setting", line)
		}
	}
}

// Through a symlink, the target is rewritten and the link kept; no
// temporary file is left behind.
func TestRewriteEnvFileSymlink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "real.env")
	if err := os.WriteFile(target, []byte("A=1\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, ".env")
	if err := os.Symlink("real.env", link); err != nil {
		t.Fatal(err)
	}
	if err := rewriteEnvFile(link, [][2]string{{"K", "v"}}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Fatalf("link replaced: %v", err)
	}
	b, _ := os.ReadFile(target)
	if string(b) != "A=1\nK=v\n" {
		t.Fatalf("target holds %q", b)
	}
	if fi, _ := os.Stat(target); fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v", fi.Mode())
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("directory holds %d entries, want 2", len(ents))
	}
	if err := rewriteEnvFile(filepath.Join(dir, "missing.env"), nil); err == nil {
		t.Error("missing env file: no error")
	}
}
