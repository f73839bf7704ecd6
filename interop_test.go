package envelope_test

import (
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/internal/testdb"
)

// requirePythonFernet skips (or fails under CI) when python3 lacks the
// cryptography package.
func requirePythonFernet(t *testing.T) {
	t.Helper()
	if err := exec.Command("python3", "-c", "import cryptography.fernet").Run(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("python3 with cryptography is required under CI: %v", err)
		}
		t.Skipf("python3 with cryptography not available: %v", err)
	}
}

// Python's cryptography opens the DEKs and values this package writes, in
// TOM Toolkit's layout: Fernet(master).decrypt(encrypted_dek) is the DEK's
// key text, and Fernet(dek).decrypt(column) is the value.
func TestPythonReadsWhatWeWrite(t *testing.T) {
	fernetOnly(t)
	requirePythonFernet(t)
	master, err := dek.GenerateKey()
	must(t, err)
	keys, err := dek.ParseKeyring(master)
	must(t, err)
	db := testdb.Open(t, testdb.SQLite)
	setup(t, db, keys)
	values := []string{"hunter2", "", "pässwörd ☃ 🔭", strings.Repeat("x", 5000), "gAAAAABlooks-like-a-token"}
	for i, v := range values {
		must(t, db.Create(&Credential{UserID: uint(1 + i%2), Password: v, Blob: []byte(v)}).Error)
	}
	type row struct {
		EncryptedDEK string `json:"encrypted_dek"`
		Password     string `json:"password"`
		Blob         string `json:"blob"`
	}
	var rows []row
	must(t, db.Raw(`SELECT p.encrypted_dek AS encrypted_dek, c.password AS password, c.blob AS blob
		FROM credentials c JOIN profiles p ON p.user_id = c.user_id ORDER BY c.id`).Scan(&rows).Error)
	in, err := json.Marshal(map[string]any{"master": master, "rows": rows})
	must(t, err)
	script := `
import json, sys
from cryptography.fernet import Fernet
d = json.load(sys.stdin)
m = Fernet(d["master"].encode())
out = []
for r in d["rows"]:
    k = Fernet(m.decrypt(r["encrypted_dek"].encode()))
    out.append([k.decrypt(r["password"].encode()).decode("utf-8"), k.decrypt(r["blob"].encode()).decode("utf-8")])
json.dump(out, sys.stdout)
`
	cmd := exec.Command("python3", "-c", script)
	cmd.Stdin = strings.NewReader(string(in))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python: %v", err)
	}
	var got [][2]string
	must(t, json.Unmarshal(out, &got))
	if len(got) != len(values) {
		t.Fatalf("python read %d rows, want %d", len(got), len(values))
	}
	for i, v := range values {
		if got[i][0] != v || got[i][1] != v {
			t.Errorf("row %d: python read %.20q / %.20q, want %.20q", i, got[i][0], got[i][1], v)
		}
	}
}
