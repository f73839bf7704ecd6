package rotate

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"gorm.io/gorm"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// TestRotateSurvivesSIGKILL builds the envelope command, runs
// "envelope rotate --env-file" on PostgreSQL with small batches, and kills
// it with SIGKILL at random instants, at least five times. After every kill
// each DEK and each blind-index key must open, to the key it was made
// with, under the keys the env file then holds; the app's data must be
// untouched; and a final run must finish the rotation.
func TestRotateSurvivesSIGKILL(t *testing.T) {
	survivesSIGKILL(t, 6_000, 300, false)
}

// TestRotateSurvivesSIGKILLAmongIndexKeys is TestRotateSurvivesSIGKILL with
// few profiles and many blind-index keys, so that kills land while index
// keys are being rewrapped: at least two must leave them part done.
func TestRotateSurvivesSIGKILLAmongIndexKeys(t *testing.T) {
	survivesSIGKILL(t, 30, 6_000, true)
}

// survivesSIGKILL seeds profiles DEKs and about indexKeys index keys, then
// kills rotations until five kills, two of which (among the DEKs, or with
// indexMidway among the index keys) left the rotation part done.
func survivesSIGKILL(t *testing.T, profiles, indexKeys int, indexMidway bool) {
	if testing.Short() {
		t.Skip("builds the envelope command and kills it repeatedly")
	}
	db := testdb.Open(t, testdb.Postgres)
	dsn := testdb.DSN(t, db)
	dir := t.TempDir()
	bin := filepath.Join(dir, "envelope")
	if out, err := exec.Command("go", "build", "-o", bin, "github.com/gorm-envelope/envelope/cmd/envelope").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}

	old := newKey(t)
	w := newWorld(t, db)
	w.seed(t, keyring(t, old), 1, profiles)
	notes := w.notes(t)
	made := bulkIndexKeys(t, db, keyring(t, old), indexKeys/3, 3)
	envFile := filepath.Join(dir, "app.env")
	if err := os.WriteFile(envFile, []byte("# app\nDEK_ENCRYPTION_KEY="+old+"\nAPP_PORT=8080\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var environ []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DEK_ENCRYPTION_KEY") && !strings.HasPrefix(kv, "ENVELOPE_") {
			environ = append(environ, kv)
		}
	}
	rotateCmd := func(extra ...string) *exec.Cmd {
		args := append([]string{"--driver", "postgres", "--dsn", dsn, "rotate", "--env-file", envFile, "--batch-size", "30"}, extra...)
		c := exec.Command(bin, args...)
		c.Env = environ
		return c
	}

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	window := 3 * time.Second // how long a whole run takes; learnt from runs that finish
	kills, midway := 0, 0
	for attempt := 1; (kills < 5 || midway < 2) && attempt <= 40; attempt++ {
		c := rotateCmd()
		var out bytes.Buffer
		c.Stdout, c.Stderr = &out, &out
		start := time.Now()
		if err := c.Start(); err != nil {
			t.Fatal(err)
		}
		delay := time.Duration(rng.Int64N(int64(window)))
		exited := make(chan error, 1)
		go func() { exited <- c.Wait() }()
		var err error
		killed := false
		select {
		case err = <-exited:
			if err != nil {
				t.Fatalf("rotate failed on its own: %v\n%s", err, out.String())
			}
			window = time.Since(start)
		case <-time.After(delay):
			killed = c.Process.Signal(syscall.SIGKILL) == nil
			err = <-exited
			if !killed && err != nil {
				t.Fatalf("rotate failed on its own: %v\n%s", err, out.String())
			}
		}

		// Whatever the instant, the env file's keys open every DEK.
		keys := envKeys(t, envFile)
		w.check(t, keys, -1)
		checkIndexKeys(t, db, keys, -1, made)
		st, verr := Verify(context.Background(), db, Options{Keys: keys, Profile: &Profile{}})
		if verr != nil {
			t.Fatalf("after attempt %d: %v", attempt, verr)
		}
		if killed {
			kills++
			if done := st.Keys[0].Count; !indexMidway && done > 0 && done < profiles {
				midway++
			}
			if done := st.IndexKeys[0].Count; indexMidway && done > 0 && done < len(made) {
				midway++
			}
			t.Logf("attempt %d: killed after %v: %d DEKs under the primary, %d under %d previous keys; %d of %d index keys under the primary",
				attempt, delay.Round(time.Millisecond), st.Keys[0].Count, profiles-st.Keys[0].Count, len(st.Keys)-1, st.IndexKeys[0].Count, len(made))
		} else {
			t.Logf("attempt %d: finished in %v", attempt, window.Round(time.Millisecond))
		}
	}
	if kills < 5 || midway < 2 {
		t.Fatalf("only %d kills (%d in the middle of a rotation)", kills, midway)
	}

	// A rerun finishes the rotation: the primary key alone opens every DEK.
	if out, err := rotateCmd("--resume").CombinedOutput(); err != nil {
		t.Fatalf("rerun: %v\n%s", err, out)
	}
	keys := envKeys(t, envFile)
	st, err := Status(context.Background(), db, Options{Keys: keys, Profile: &Profile{}})
	if err != nil || !st.Current() || st.Keys[0].Count != profiles || st.IndexKeys[0].Count != len(made) {
		t.Fatalf("after the rerun: %+v, %v", st, err)
	}
	w.check(t, keyring(t, envPrimary(t, envFile)), 0)
	checkIndexKeys(t, db, keyring(t, envPrimary(t, envFile)), 0, made)
	if after := w.notes(t); len(after) != len(notes) {
		t.Fatal("notes changed")
	} else {
		for id, b := range notes {
			if !bytes.Equal(after[id], b) {
				t.Fatalf("note %d changed", id)
			}
		}
	}
	if b, _ := os.ReadFile(envFile); !bytes.HasPrefix(b, []byte("# app\n")) || !bytes.Contains(b, []byte("\nAPP_PORT=8080\n")) {
		t.Errorf("env file lost its other lines:\n%s", b)
	}
}

// envKeys parses the keyring an env file holds.
func envKeys(t *testing.T, path string) *dek.Keyring {
	t.Helper()
	var primary string
	var previous []string
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, dek.EnvKey+"="); ok {
			primary = v
		}
		if v, ok := strings.CutPrefix(line, dek.EnvKeyPrevious+"="); ok && v != "" {
			previous = strings.Split(v, ",")
		}
	}
	return keyring(t, primary, previous...)
}

func envPrimary(t *testing.T, path string) string {
	t.Helper()
	b, _ := os.ReadFile(path)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, dek.EnvKey+"="); ok {
			return v
		}
	}
	t.Fatal("no primary key in the env file")
	return ""
}

// bulkIndexKeys stores versions 1 to versions of n index names under keys,
// in a few statements, and returns every key by "name vN".
func bulkIndexKeys(t testing.TB, db *gorm.DB, keys *dek.Keyring, n, versions int) map[string]dek.DEK {
	t.Helper()
	ctx := context.Background()
	indexStore(t, db, keys)
	made := map[string]dek.DEK{}
	var rows []indexRow
	for i := range n {
		for v := 1; v <= versions; v++ {
			d, err := dek.NewDEK()
			if err != nil {
				t.Fatal(err)
			}
			wrapped, err := keys.Seal(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			name := fmt.Sprintf("index%d", i)
			made[fmt.Sprintf("%s v%d", name, v)] = d
			rows = append(rows, indexRow{Name: name, Version: v, WrappedKey: wrapped})
		}
	}
	if err := db.CreateInBatches(rows, 1000).Error; err != nil {
		t.Fatal(err)
	}
	return made
}
