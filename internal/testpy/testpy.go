// Package testpy runs the Python cross-checks of the project's tests:
// python3 with the cryptography package computes, from the specification
// alone, what the Go code writes and reads.
package testpy

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// Python returns the path of a python3 that imports module (e.g.
// "cryptography.fernet"). Without one it skips the test, or fails it when
// CI is set, where every prerequisite is expected to be present.
func Python(t testing.TB, module string) string {
	t.Helper()
	py, err := exec.LookPath("python3")
	if err != nil {
		SkipOrFail(t, "python3 not found")
	}
	if out, err := exec.Command(py, "-c", "import "+module).CombinedOutput(); err != nil {
		SkipOrFail(t, "python3 cannot import %s: %v\n%s", module, err, out)
	}
	return py
}

// Run runs script with py, giving it in as JSON in a file whose path is
// its first argument, and decodes the JSON it prints into out.
func Run(t testing.TB, py, script string, in, out any) {
	t.Helper()
	data, err := json.Marshal(in)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "input.json")
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(py, "-c", script, path)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, stderr.Bytes())
	}
	if err := json.Unmarshal(stdout, out); err != nil {
		t.Fatalf("python3 output %q: %v", stdout, err)
	}
}

// SkipOrFail skips the test, or fails it when CI is set.
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatalf(format, args...)
	}
	t.Skipf(format, args...)
}
