package kms_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"
	"gocloud.dev/secrets/driver"
	"gocloud.dev/secrets/localsecrets"

	"github.com/gorm-envelope/envelope/dek"
	"github.com/gorm-envelope/envelope/dek/dektest"
	"github.com/gorm-envelope/envelope/kms"
)

// localURL returns a base64key:// URL for a fresh random key.
func localURL(t testing.TB) string {
	t.Helper()
	k, err := localsecrets.NewRandomKey()
	if err != nil {
		t.Fatal(err)
	}
	return "base64key://" + base64.URLEncoding.EncodeToString(k[:])
}

func openLocal(t testing.TB) (*kms.Keeper, string) {
	t.Helper()
	u := localURL(t)
	k, err := kms.Open(context.Background(), u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { k.Close() })
	return k, u
}

// secretsOf returns what no error may show of a base64key:// URL: the
// URL, and the key in both base64 alphabets.
func secretsOf(u string) []string {
	key := strings.TrimPrefix(u, "base64key://")
	raw, _ := base64.URLEncoding.DecodeString(key)
	return []string{u, key, base64.StdEncoding.EncodeToString(raw), base64.RawURLEncoding.EncodeToString(raw)}
}

func TestKeeperConformance(t *testing.T) {
	var secret []string
	dektest.Run(t, dektest.Harness{
		New: func(t *testing.T) (dek.Encrypter, dek.Encrypter) {
			a, ua := openLocal(t)
			b, ub := openLocal(t)
			secret = append(secret, secretsOf(ua)...)
			secret = append(secret, secretsOf(ub)...)
			return a, b
		},
		Secret: func() []string { return secret },
	})
}

// A Keeper made with New over any *secrets.Keeper passes too.
func TestNewKeeperConformance(t *testing.T) {
	dektest.Run(t, dektest.Harness{
		New: func(t *testing.T) (dek.Encrypter, dek.Encrypter) {
			ka, _ := localsecrets.NewRandomKey()
			kb, _ := localsecrets.NewRandomKey()
			return kms.New(localsecrets.NewKeeper(ka), "local:a"), kms.New(localsecrets.NewKeeper(kb), "local:b")
		},
	})
}

// A Keeper and a Fernet key in one keyring, either one primary.
func TestMixedKeyringConformance(t *testing.T) {
	dektest.Run(t, dektest.Harness{
		New: func(t *testing.T) (dek.Encrypter, dek.Encrypter) {
			k, _ := openLocal(t)
			text, _ := dek.GenerateKey()
			f, err := dek.ParseKey(text)
			if err != nil {
				t.Fatal(err)
			}
			return k, f
		},
	})
	dektest.Run(t, dektest.Harness{
		New: func(t *testing.T) (dek.Encrypter, dek.Encrypter) {
			k, _ := openLocal(t)
			text, _ := dek.GenerateKey()
			f, err := dek.ParseKey(text)
			if err != nil {
				t.Fatal(err)
			}
			return f, k
		},
	})
}

func TestIDHidesURL(t *testing.T) {
	a, ua := openLocal(t)
	b, _ := openLocal(t)
	if !strings.HasPrefix(a.ID(), "base64key:") || len(a.ID()) != len("base64key:")+8 || a.ID() == b.ID() {
		t.Fatalf("IDs %q and %q: want base64key: and 8 hex digits, distinct", a.ID(), b.ID())
	}
	again, err := kms.Open(context.Background(), " "+ua+"\n")
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if again.ID() != a.ID() {
		t.Fatalf("one URL, two IDs: %q, %q", a.ID(), again.ID())
	}
	if got := dek.KeyID(a); got != a.ID() {
		t.Fatalf("dek.KeyID = %q, want %q", got, a.ID())
	}
	for _, s := range []string{fmt.Sprint(a), fmt.Sprintf("%v %+v %#v %s", a, a, a, a)} {
		for _, sec := range secretsOf(ua) {
			if strings.Contains(s, sec) {
				t.Fatalf("printed the URL: %s", s)
			}
		}
	}
}

func TestOpenErrorsHideURL(t *testing.T) {
	ctx := context.Background()
	short := "base64key://" + base64.URLEncoding.EncodeToString([]byte("sixteen byte key"))
	for i, tc := range []struct {
		url, want string
	}{
		{"base64key://", "needs the key"},
		{short, "base64key:"},
		{short + "?x=1", "invalid query parameter"},
		{"nosuchkms://secret-key-material-0123456789", `no driver for scheme "nosuchkms"`},
		{"base64key://%zz-secret-key-material-0123456789", "not a URL"},
	} {
		k, err := kms.Open(ctx, tc.url)
		if err == nil {
			k.Close()
			t.Errorf("#%d: opened", i)
			continue
		}
		if !errors.Is(err, kms.ErrURL) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("#%d: got %v, want ErrURL saying %q", i, err, tc.want)
		}
		key := strings.TrimPrefix(strings.SplitN(tc.url, "?", 2)[0], "base64key://")
		key = strings.TrimPrefix(key, "nosuchkms://")
		if (key != "" && strings.Contains(err.Error(), key)) || strings.Contains(err.Error(), "\n") {
			t.Errorf("#%d: error shows the URL or spans lines: %v", i, err)
		}
	}
}

func TestParseKeyringMixed(t *testing.T) {
	ctx := context.Background()
	fernetText, _ := dek.GenerateKey()
	k, u := openLocal(t)
	r, err := kms.ParseKeyring(ctx, u, fernetText)
	if err != nil {
		t.Fatal(err)
	}
	defer kms.CloseKeyring(r)
	if r.Len() != 2 || dek.KeyID(r.Primary()) != k.ID() || !strings.HasPrefix(dek.KeyID(r.Keys()[1]), "fernet:") {
		t.Fatalf("keyring %v", r.Keys())
	}

	_, err = kms.ParseKeyring(ctx, u, fernetText, "not-a-key")
	var ke *dek.KeyError
	if !errors.As(err, &ke) || ke.Source != "previous key 2" || strings.Contains(err.Error(), "not-a-key") {
		t.Fatalf("bad Fernet entry: %v", err)
	}
	_, err = kms.ParseKeyring(ctx, fernetText, "base64key://")
	if !errors.Is(err, kms.ErrURL) || !strings.Contains(err.Error(), "previous key 1") {
		t.Fatalf("bad URL entry: %v", err)
	}
}

func TestKeyringFromEnv(t *testing.T) {
	ctx := context.Background()
	fernetText, _ := dek.GenerateKey()
	_, u := openLocal(t)
	t.Setenv(dek.EnvKey, "")
	t.Setenv(dek.EnvKeyPrevious, "")
	if _, err := kms.KeyringFromEnv(ctx); !errors.Is(err, dek.ErrNoKey) {
		t.Fatalf("unset: %v, want ErrNoKey", err)
	}
	t.Setenv(dek.EnvKey, u)
	t.Setenv(dek.EnvKeyPrevious, " "+fernetText+", ,")
	r, err := kms.KeyringFromEnv(ctx)
	if err != nil || r.Len() != 2 {
		t.Fatalf("got %v, %v", r, err)
	}
	kms.CloseKeyring(r)
	t.Setenv(dek.EnvKeyPrevious, fernetText+",base64key://c2hvcnQ=")
	_, err = kms.KeyringFromEnv(ctx)
	if !errors.Is(err, kms.ErrURL) || !strings.Contains(err.Error(), dek.EnvKeyPrevious+" (entry 2)") || strings.Contains(err.Error(), "c2hvcnQ") {
		t.Fatalf("bad previous URL: %v", err)
	}
}

// flaky is a keeper driver that fails every call with err, as a KMS that
// cannot be reached does.
type flaky struct {
	err  error
	code gcerrors.ErrorCode
}

func (f flaky) Encrypt(context.Context, []byte) ([]byte, error) { return nil, f.err }
func (f flaky) Decrypt(context.Context, []byte) ([]byte, error) { return nil, f.err }
func (f flaky) Close() error                                    { return nil }
func (f flaky) ErrorAs(error, any) bool                         { return false }
func (f flaky) ErrorCode(error) gcerrors.ErrorCode              { return f.code }

var _ driver.Keeper = flaky{}

// Transient KMS failures are not "wrong key": they do not wrap
// dek.ErrDecrypt, and the keyring's error says what happened.
func TestTransientErrorsAreNotErrDecrypt(t *testing.T) {
	ctx := context.Background()
	fernetText, _ := dek.GenerateKey()
	old, _ := dek.ParseKeyring(fernetText)
	d, _ := dek.NewDEK()
	sealed, _ := old.Seal(ctx, d)
	for i, f := range []flaky{
		{context.DeadlineExceeded, gcerrors.DeadlineExceeded},
		{context.Canceled, gcerrors.Canceled},
		{errors.New("throttled"), gcerrors.ResourceExhausted},
		{errors.New("key is pending deletion"), gcerrors.FailedPrecondition},
		{errors.New("key disabled"), gcerrors.PermissionDenied},
		{errors.New("internal"), gcerrors.Internal},
		{&netErr{}, gcerrors.Unknown},
	} {
		k := kms.New(secrets.NewKeeper(f), "flaky:1")
		_, err := k.Decrypt(ctx, []byte("some KMS ciphertext"))
		var ke *kms.Error
		if err == nil || errors.Is(err, dek.ErrDecrypt) || !errors.As(err, &ke) || ke.ID != "flaky:1" {
			t.Errorf("#%d: got %v; want a *kms.Error not wrapping ErrDecrypt", i, err)
		}
		if !strings.Contains(err.Error(), f.err.Error()) {
			t.Errorf("#%d: %v does not say what failed", i, err)
		}
		if _, err := k.Encrypt(ctx, []byte("x")); err == nil || errors.Is(err, dek.ErrDecrypt) {
			t.Errorf("#%d: Encrypt: %v", i, err)
		}
		// Primary unreachable, previous Fernet key: a DEK under the Fernet
		// key still opens (the Fernet token never reaches the KMS), and one
		// that is not is reported with the KMS's failure.
		ring, _ := dek.NewKeyring(k, old.Primary())
		if got, idx, err := ring.Open(ctx, sealed); err != nil || got != d || idx != 1 {
			t.Errorf("#%d: Fernet DEK behind a failing KMS: idx %d, %v", i, idx, err)
		}
		if _, _, err := ring.Open(ctx, []byte("some KMS ciphertext")); err == nil || !strings.Contains(err.Error(), f.err.Error()) {
			t.Errorf("#%d: keyring hides the KMS failure: %v", i, err)
		}
	}
	// An opaque failure with no code is how a key refuses a ciphertext
	// that is not its own (localsecrets, AWS IncorrectKeyException).
	k := kms.New(secrets.NewKeeper(flaky{errors.New("decrypt failed"), gcerrors.Unknown}), "x")
	if _, err := k.Decrypt(ctx, []byte("ct")); !errors.Is(err, dek.ErrDecrypt) {
		t.Errorf("opaque failure: %v, want ErrDecrypt", err)
	}
	k = kms.New(secrets.NewKeeper(flaky{errors.New("bad ciphertext"), gcerrors.InvalidArgument}), "x")
	if _, err := k.Decrypt(ctx, []byte("ct")); !errors.Is(err, dek.ErrDecrypt) {
		t.Errorf("InvalidArgument: %v, want ErrDecrypt", err)
	}
}

type netErr struct{}

func (*netErr) Error() string   { return "dial tcp 127.0.0.1:1: connection refused" }
func (*netErr) Timeout() bool   { return false }
func (*netErr) Temporary() bool { return false }

// counting counts the calls that reach a keeper driver: the requests a
// real KMS would see.
type counting struct {
	driver.Keeper
	decrypts int
}

func (c *counting) Decrypt(ctx context.Context, b []byte) ([]byte, error) {
	c.decrypts++
	return c.Keeper.Decrypt(ctx, b)
}

// localDriver is localsecrets' keeper seen as a driver.
type localDriver struct{ k *secrets.Keeper }

func (l localDriver) Encrypt(ctx context.Context, b []byte) ([]byte, error) {
	return l.k.Encrypt(ctx, b)
}
func (l localDriver) Decrypt(ctx context.Context, b []byte) ([]byte, error) {
	return l.k.Decrypt(ctx, b)
}
func (l localDriver) Close() error                       { return l.k.Close() }
func (l localDriver) ErrorAs(error, any) bool            { return false }
func (l localDriver) ErrorCode(error) gcerrors.ErrorCode { return gcerrors.Unknown }

// DEKs under a Fernet key never reach the KMS, and no KMS ciphertext is
// taken for a Fernet token.
func TestFernetTokensSkipTheKMS(t *testing.T) {
	ctx := context.Background()
	raw, _ := localsecrets.NewRandomKey()
	c := &counting{Keeper: localDriver{localsecrets.NewKeeper(raw)}}
	k := kms.New(secrets.NewKeeper(c), "local:counted")
	fernetText, _ := dek.GenerateKey()
	f, _ := dek.ParseKey(fernetText)
	ring, _ := dek.NewKeyring(k, f)
	for i := 0; i < 50; i++ {
		d, _ := dek.NewDEK()
		underFernet, _ := f.Encrypt(ctx, []byte(base64.URLEncoding.EncodeToString(d[:])))
		if _, idx, err := ring.Open(ctx, underFernet); err != nil || idx != 1 {
			t.Fatalf("#%d: idx %d, %v", i, idx, err)
		}
		sealed, _ := ring.Seal(ctx, d)
		if _, idx, err := ring.Open(ctx, sealed); err != nil || idx != 0 {
			t.Fatalf("#%d: KMS DEK: idx %d, %v", i, idx, err)
		}
	}
	if c.decrypts != 50 {
		t.Fatalf("%d KMS decrypts for 50 KMS DEKs and 50 Fernet DEKs; want 50", c.decrypts)
	}
	// The tombstone and other non-tokens still go to the KMS, which refuses them.
	if _, err := k.Decrypt(ctx, dek.Tombstone()); !errors.Is(err, dek.ErrDecrypt) {
		t.Fatalf("tombstone: %v", err)
	}
	if !bytes.Equal(dek.Tombstone(), []byte("envelope:shredded")) {
		t.Fatal("tombstone changed")
	}
}
