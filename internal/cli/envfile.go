package cli

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// An env file holds KEY=VALUE lines, as read by systemd's EnvironmentFile,
// Docker Compose and most dotenv loaders. Blank lines, comments and
// "export " prefixes are allowed; values may be quoted.

// readEnvFile returns the variables an env file sets (the last setting of
// a variable wins).
func readEnvFile(path string) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	vars := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if name, val, ok := parseEnvLine(line); ok {
			vars[name] = val
		}
	}
	return vars, nil
}

// parseEnvLine splits one line into name and value.
func parseEnvLine(line string) (name, val string, ok bool) {
	s := strings.TrimSpace(line)
	if s == "" || s[0] == '#' {
		return "", "", false
	}
	s = strings.TrimPrefix(s, "export ")
	name, val, ok = strings.Cut(s, "=")
	if !ok {
		return "", "", false
	}
	name = strings.TrimSpace(name)
	val = strings.TrimSpace(val)
	if len(val) >= 2 && (val[0] == '"' || val[0] == '\'') && val[len(val)-1] == val[0] {
		val = val[1 : len(val)-1]
	} else if i := strings.Index(val, " #"); i >= 0 {
		val = strings.TrimSpace(val[:i])
	}
	return name, val, true
}

// setEnvLines returns content with each variable of set given its new
// value: every line setting it is replaced (keeping an "export " prefix and
// the line ending), and variables not set yet are appended. All other lines
// and comments are kept as they are.
func setEnvLines(content []byte, set [][2]string) []byte {
	lines := strings.SplitAfter(string(content), "\n")
	if len(lines) > 0 && lines[len(lines)-1] == "" {
		lines = lines[:len(lines)-1]
	}
	seen := map[string]bool{}
	for i, line := range lines {
		name, _, ok := parseEnvLine(line)
		if !ok {
			continue
		}
		for _, kv := range set {
			if kv[0] != name {
				continue
			}
			prefix := ""
			if strings.HasPrefix(strings.TrimSpace(line), "export ") {
				prefix = "export "
			}
			end := "\n"
			if strings.HasSuffix(line, "\r\n") {
				end = "\r\n"
			} else if !strings.HasSuffix(line, "\n") {
				end = ""
			}
			lines[i] = prefix + kv[0] + "=" + kv[1] + end
			seen[name] = true
		}
	}
	var b bytes.Buffer
	for _, l := range lines {
		b.WriteString(l)
	}
	if b.Len() > 0 && !bytes.HasSuffix(b.Bytes(), []byte("\n")) {
		b.WriteString("\n")
	}
	for _, kv := range set {
		if !seen[kv[0]] {
			b.WriteString(kv[0] + "=" + kv[1] + "\n")
		}
	}
	return b.Bytes()
}

// rewriteEnvFile atomically sets variables in the env file at path: the new
// content is written to a temporary file in the same directory with mode
// 0600, synced, renamed over the file (the target, if path is a symlink),
// and the directory is synced, so that after a crash the file holds either
// the old content or the new, durably.
func rewriteEnvFile(path string, set [][2]string) error {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return err
	}
	old, err := os.ReadFile(real)
	if err != nil {
		return err
	}
	fi, err := os.Stat(real)
	if err != nil {
		return err
	}
	dir, base := filepath.Split(real)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+base+".envelope-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	committed := false
	defer func() {
		if !committed {
			tmp.Close()
			os.Remove(tmp.Name())
		}
	}()
	if err := tmp.Chmod(0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	keepOwner(tmp, fi)
	if _, err := tmp.Write(setEnvLines(old, set)); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), real); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	committed = true
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}
