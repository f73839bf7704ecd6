package blind

import (
	"bytes"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func randRoot(t testing.TB) []byte {
	t.Helper()
	root := make([]byte, RootKeySize)
	if _, err := rand.Read(root); err != nil {
		t.Fatal(err)
	}
	return root
}

func mustKey(t testing.TB, root []byte, name string) *Key {
	t.Helper()
	k, err := NewKey(root, name)
	if err != nil {
		t.Fatalf("NewKey(%q): %v", name, err)
	}
	return k
}

type vector struct {
	DEK         string `json:"dek"`
	RootHex     string `json:"root_hex"`
	Name        string `json:"name"`
	Transform   string `json:"transform"`
	Bits        int    `json:"bits"`
	Version     int    `json:"version"`
	Plaintext   string `json:"plaintext"`
	Transformed string `json:"transformed"`
	KeyHex      string `json:"key_hex"`
	MACHex      string `json:"mac_hex"`
	Stored      string `json:"stored"`
}

func loadVectors(t testing.TB) []vector {
	t.Helper()
	data, err := os.ReadFile("testdata/vectors.json")
	if err != nil {
		t.Fatal(err)
	}
	var doc struct{ Vectors []vector }
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("testdata/vectors.json: %v", err)
	}
	if len(doc.Vectors) == 0 {
		t.Fatal("testdata/vectors.json has no vectors")
	}
	return doc.Vectors
}

// TestVectors checks each fixed vector at every stage: the DEK text
// decodes to the root key, the derived key, the transform, the full MAC
// and the stored value.
func TestVectors(t *testing.T) {
	for i, v := range loadVectors(t) {
		root, err := hex.DecodeString(v.RootHex)
		if err != nil {
			t.Fatalf("#%d: root_hex: %v", i, err)
		}
		if len(v.DEK) != 44 {
			t.Errorf("#%d: dek is %d characters, want 44", i, len(v.DEK))
		}
		if dek, err := base64.URLEncoding.DecodeString(v.DEK); err != nil || !bytes.Equal(dek, root) {
			t.Errorf("#%d: dek decodes to %x (%v), want root %x", i, dek, err, root)
		}
		k, err := hkdf.Key(sha256.New, root, nil, "gorm-envelope blind index v1\x00"+v.Name, 32)
		if err != nil || hex.EncodeToString(k) != v.KeyHex {
			t.Errorf("#%d: derived key %x (%v), want %s", i, k, err, v.KeyHex)
		}
		tr := mustTransform(t, v.Transform)
		if got := tr.Apply(v.Plaintext); got != v.Transformed {
			t.Errorf("#%d: %q.Apply(%q) = %q, want %q", i, v.Transform, v.Plaintext, got, v.Transformed)
		}
		key := mustKey(t, root, v.Name)
		if got := key.Value(v.Version, 256, v.Transformed); got != strconv.Itoa(v.Version)+":"+v.MACHex {
			t.Errorf("#%d: 256-bit value %s, want the whole MAC %s", i, got, v.MACHex)
		}
		if got := key.Value(v.Version, v.Bits, tr.Apply(v.Plaintext)); got != v.Stored {
			t.Errorf("#%d: Value = %s, want %s", i, got, v.Stored)
		}
		if got := string(key.AppendValue([]byte("x"), v.Version, v.Bits, v.Transformed)); got != "x"+v.Stored {
			t.Errorf("#%d: AppendValue = %s, want x%s", i, got, v.Stored)
		}
		if ver, ok := Version(v.Stored); !ok || ver != v.Version {
			t.Errorf("#%d: Version(%s) = %d, %v; want %d", i, v.Stored, ver, ok, v.Version)
		}
	}
}

// refValue computes an index value the long way, from the spec.
func refValue(t testing.TB, root []byte, name string, version, bits int, plain string) string {
	t.Helper()
	k, err := hkdf.Key(sha256.New, root, nil, "gorm-envelope blind index v1\x00"+name, 32)
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, k)
	m.Write([]byte(plain))
	mac := m.Sum(nil)
	n := (bits + 7) / 8
	kept := mac[:n]
	for b := bits; b < 8*n; b++ {
		kept[n-1] &^= 0x80 >> (b % 8)
	}
	return fmt.Sprintf("%d:%x", version, kept)
}

// Every length from 1 to 256 bits keeps ceil(bits/8) bytes of the MAC and
// zeroes the unused low bits of the last.
func TestValueTruncation(t *testing.T) {
	root := randRoot(t)
	k := mustKey(t, root, "email")
	for _, plain := range []string{"", "a", "mixed@example.com", strings.Repeat("é", 100)} {
		full := k.Value(1, 256, plain)
		for bits := MinBits; bits <= MaxBits; bits++ {
			got := k.Value(1, bits, plain)
			if want := refValue(t, root, "email", 1, bits, plain); got != want {
				t.Fatalf("%d bits of %q: %s, want %s", bits, plain, got, want)
			}
			h := got[2:]
			if len(h) != 2*((bits+7)/8) {
				t.Fatalf("%d bits: %d hex digits", bits, len(h))
			}
			last, _ := strconv.ParseUint(h[len(h)-2:], 16, 8)
			if unused := 8*((bits+7)/8) - bits; last&(1<<unused-1) != 0 {
				t.Fatalf("%d bits: last byte %02x has its %d low bits set", bits, last, unused)
			}
			// Whole bytes are a prefix of the full MAC.
			if whole := bits / 8; full[2:2+2*whole] != h[:2*whole] {
				t.Fatalf("%d bits: %s is not a prefix of %s", bits, h, full)
			}
		}
	}
}

func TestValueSeparation(t *testing.T) {
	root := randRoot(t)
	a := mustKey(t, root, "email")
	values := map[string]string{}
	add := func(what, v string) {
		t.Helper()
		if prev, ok := values[v]; ok {
			t.Errorf("%s and %s give the same value %s", prev, what, v)
		}
		values[v] = what
	}
	add("email", a.Value(1, 256, "x"))
	add("email2", mustKey(t, root, "email2").Value(1, 256, "x"))
	add("Email", mustKey(t, root, "Email").Value(1, 256, "x"))
	add("other root", mustKey(t, randRoot(t), "email").Value(1, 256, "x"))
	add("other plaintext", a.Value(1, 256, "y"))
	add("version 2", a.Value(2, 256, "x"))
	if a.Value(1, 256, "x") != mustKey(t, root, "email").Value(1, 256, "x") {
		t.Error("two keys from the same root and name differ")
	}
}

// Long plaintexts are fed to the HMAC in pieces; every length around the
// piece and block sizes must hash like one Write.
func TestValueLengths(t *testing.T) {
	root := randRoot(t)
	k := mustKey(t, root, "n")
	buf := make([]byte, 300)
	rand.Read(buf)
	for n := range len(buf) {
		plain := string(buf[:n])
		if got, want := k.Value(7, 256, plain), refValue(t, root, "n", 7, 256, plain); got != want {
			t.Fatalf("%d bytes: %s, want %s", n, got, want)
		}
	}
}

func TestNewKeyErrors(t *testing.T) {
	root := randRoot(t)
	for i, tc := range []struct {
		root []byte
		name string
		msg  string
	}{
		{root[:31], "email", "envelope: blind index root key is 31 bytes, want 32"},
		{append(root, 0), "email", "envelope: blind index root key is 33 bytes, want 32"},
		{nil, "email", "envelope: blind index root key is 0 bytes, want 32"},
		{root, "", "envelope: blind index has no name"},
	} {
		k, err := NewKey(tc.root, tc.name)
		if err == nil || k != nil {
			t.Errorf("#%d: NewKey = %v, %v; want an error", i, k, err)
			continue
		}
		if err.Error() != tc.msg {
			t.Errorf("#%d: %q, want %q", i, err, tc.msg)
		}
		if strings.Contains(err.Error(), hex.EncodeToString(root[:4])) || strings.Contains(err.Error(), string(root[:4])) {
			t.Errorf("#%d: the error shows key bytes: %q", i, err)
		}
	}
}

// A Key printed with fmt shows none of its key.
func TestKeyDoesNotPrint(t *testing.T) {
	root := randRoot(t)
	key := mustKey(t, root, "email")
	key.Value(1, 16, "warm the pool")
	k, _ := hkdf.Key(sha256.New, root, nil, "gorm-envelope blind index v1\x00email", 32)
	out := fmt.Sprintf("%v %+v %#v", key, key, key)
	for _, secret := range [][]byte{root, k} {
		for _, s := range []string{string(secret[:8]), hex.EncodeToString(secret[:8]), fmt.Sprint(secret[:8])[1:20]} {
			if strings.Contains(out, s) {
				t.Fatalf("fmt of a Key shows key bytes: %s", out)
			}
		}
	}
}

func TestChecks(t *testing.T) {
	for _, bits := range []int{MinBits, 7, 8, 9, 128, MaxBits} {
		if err := CheckBits(bits); err != nil {
			t.Errorf("CheckBits(%d): %v", bits, err)
		}
	}
	for _, bits := range []int{math.MinInt, -1, 0, 257, 512} {
		if err := CheckBits(bits); err == nil {
			t.Errorf("CheckBits(%d) = nil", bits)
		}
	}
	if err := CheckBits(0); err == nil || err.Error() != "envelope: blind index length 0 bits is out of range: want 1 to 256" {
		t.Errorf("CheckBits(0) = %v", err)
	}
	for _, v := range []int{1, 2, 99, math.MaxInt32} {
		if err := CheckVersion(v); err != nil {
			t.Errorf("CheckVersion(%d): %v", v, err)
		}
	}
	for _, v := range []int{math.MinInt, -1, 0, math.MaxInt32 + 1} {
		if err := CheckVersion(v); err == nil {
			t.Errorf("CheckVersion(%d) = nil", v)
		}
	}
}

func TestValuePanics(t *testing.T) {
	k := mustKey(t, randRoot(t), "email")
	for _, tc := range []struct{ version, bits int }{{1, 0}, {1, 257}, {0, 8}, {-1, 8}, {math.MaxInt32 + 1, 8}} {
		func() {
			defer func() {
				r := recover()
				if r == nil {
					t.Errorf("Value(%d, %d) did not panic", tc.version, tc.bits)
				} else if s := fmt.Sprint(r); strings.Contains(s, "secret") {
					t.Errorf("Value(%d, %d) panicked with the plaintext: %s", tc.version, tc.bits, s)
				}
			}()
			k.Value(tc.version, tc.bits, "secret")
		}()
	}
}

func TestVersion(t *testing.T) {
	for i, tc := range []struct {
		in   string
		want int
		ok   bool
	}{
		{"1:00", 1, true},
		{"1:7f20", 1, true},
		{"12:ab", 12, true},
		{"2147483647:80", math.MaxInt32, true},
		{"1:" + strings.Repeat("ab", 32), 1, true},
		{"1:" + strings.Repeat("ab", 33), 0, false}, // longer than a MAC
		{"2147483648:80", 0, false},
		{"99999999999:80", 0, false},
		{"0:80", 0, false},
		{"01:80", 0, false},
		{"-1:80", 0, false},
		{"+1:80", 0, false},
		{" 1:80", 0, false},
		{"1:", 0, false},
		{"1:8", 0, false},
		{"1:800", 0, false},
		{"1:AB", 0, false},
		{"1:ag", 0, false},
		{"1:ab ", 0, false},
		{"1;ab", 0, false},
		{"1", 0, false},
		{":ab", 0, false},
		{"", 0, false},
		{"1:ab:cd", 0, false},
	} {
		v, ok := Version(tc.in)
		if v != tc.want || ok != tc.ok {
			t.Errorf("#%d: Version(%q) = %d, %v; want %d, %v", i, tc.in, v, ok, tc.want, tc.ok)
		}
	}
}

func FuzzVersion(f *testing.F) {
	// Seeds: values Value writes, and near misses of each rule.
	for _, s := range []string{"1:7f20", "2147483647:80", "2147483648:80", "01:ab", "1:AB", "1:abc", "1:"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, ok := Version(s)
		if !ok {
			return
		}
		// What Version accepts is what Value writes: re-serialise it.
		h := s[strings.IndexByte(s, ':')+1:]
		if strconv.Itoa(v)+":"+h != s || CheckVersion(v) != nil || strings.ToLower(h) != h {
			t.Errorf("Version(%q) = %d, true", s, v)
		}
		if _, err := hex.DecodeString(h); err != nil || len(h) < 2 || len(h) > 64 {
			t.Errorf("Version(%q) accepted hex %q", s, h)
		}
	})
}

func TestVersionOfValue(t *testing.T) {
	k := mustKey(t, randRoot(t), "email")
	for _, version := range []int{1, 9, 10, 4096, math.MaxInt32} {
		for _, bits := range []int{1, 8, 9, 256} {
			s := k.Value(version, bits, "x")
			if v, ok := Version(s); !ok || v != version {
				t.Errorf("Version(%s) = %d, %v; want %d", s, v, ok, version)
			}
		}
	}
}

// Concurrent calls on one Key give the values one goroutine gives.
func TestValueConcurrent(t *testing.T) {
	k := mustKey(t, randRoot(t), "email")
	plains := make([]string, 64)
	want := make([]string, len(plains))
	for i := range plains {
		plains[i] = strings.Repeat(strconv.Itoa(i), i)
		want[i] = k.Value(1, 32, plains[i])
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8)
	for g := range 8 {
		wg.Go(func() {
			var buf []byte
			for r := range 200 {
				i := (g*31 + r) % len(plains)
				buf = k.AppendValue(buf[:0], 1, 32, plains[i])
				if string(buf) != want[i] {
					errs <- fmt.Sprintf("goroutine %d: %q gave %s, want %s", g, plains[i], buf, want[i])
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestAllocations(t *testing.T) {
	if raceEnabled {
		t.Skip("sync.Pool drops items under the race detector")
	}
	k := mustKey(t, randRoot(t), "email")
	buf := make([]byte, 0, 80)
	for _, n := range []int{0, 32, 1024} {
		plain := strings.Repeat("x", n)
		if a := testing.AllocsPerRun(200, func() { buf = k.AppendValue(buf[:0], 1, 256, plain) }); a != 0 {
			t.Errorf("AppendValue of %d bytes: %v allocations, want 0", n, a)
		}
		if a := testing.AllocsPerRun(200, func() { _ = k.Value(1, 256, plain) }); a != 1 {
			t.Errorf("Value of %d bytes: %v allocations, want 1", n, a)
		}
	}
}

// docs/format.md's worked example is the first vector.
func TestFormatDocExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/format.md")
	if err != nil {
		t.Fatal(err)
	}
	_, example, ok := strings.Cut(string(doc), "### Worked example")
	if !ok {
		t.Fatal("docs/format.md has no worked example")
	}
	v := loadVectors(t)[0]
	root, _ := hex.DecodeString(v.RootHex)
	prk, _ := hkdf.Extract(sha256.New, root, nil)
	info := hex.EncodeToString([]byte("gorm-envelope blind index v1")) + "` `00` `" + hex.EncodeToString([]byte(v.Name))
	for _, want := range []string{
		v.RootHex, v.DEK, "`" + v.Name + "`", info, hex.EncodeToString(prk), v.KeyHex, "`" + v.Transform + "`", fmt.Sprintf("%q", v.Plaintext),
		v.Transformed, hex.EncodeToString([]byte(v.Transformed)), v.MACHex, fmt.Sprintf("| bits, n | %d, %d:", v.Bits, (v.Bits+7)/8),
		fmt.Sprintf("| version | %d |", v.Version), "| stored | `" + v.Stored + "` |",
	} {
		if !strings.Contains(example, want) {
			t.Errorf("the worked example in docs/format.md does not show %s", want)
		}
	}
}
