// Package kms keeps gorm-envelope's master key in a key management service:
// AWS KMS, Google Cloud KMS, Azure Key Vault or HashiCorp Vault, through
// the portable keepers of gocloud.dev/secrets.
//
// A [Keeper] is a [dek.Encrypter]: it encrypts and decrypts the per-owner
// DEKs, so the master key itself never leaves the KMS. It goes wherever a
// Fernet master key goes, alone or mixed with Fernet keys in one
// [dek.Keyring]:
//
//	keys, err := kms.ParseKeyring(ctx, "awskms:///arn:aws:kms:eu-west-1:111122223333:key/1234abcd-...?region=eu-west-1")
//	err = db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}}))
//
// This package is a module of its own, github.com/gorm-envelope/envelope/kms,
// so the cloud SDKs it needs never become dependencies of an app that keeps
// its master key in the environment.
//
// # Key URLs
//
// [Open] takes any URL gocloud.dev/secrets supports; the drivers for these
// schemes are linked in:
//
//	awskms://KEY_ID?region=REGION        AWS KMS (key id, alias or ARN: awskms:///ARN)
//	gcpkms://projects/P/locations/L/keyRings/R/cryptoKeys/K    Google Cloud KMS
//	azurekeyvault://VAULT.vault.azure.net/keys/KEY             Azure Key Vault
//	hashivault://KEY                     HashiCorp Vault transit engine
//	base64key://BASE64_32_BYTES          a local key, for tests and examples
//
// Credentials come from each cloud's usual sources (environment, instance
// or workload identity, CLI login); see https://gocloud.dev/howto/secrets/.
//
// # Migrating from an environment key
//
// [ParseKeyring] and [KeyringFromEnv] accept Fernet key text and key URLs in
// any mix. With the KMS key as primary and the old Fernet key as previous,
// the app reads every DEK and makes new ones in the KMS; rotate.Run then
// re-encrypts the old DEKs under the KMS key, after which the Fernet key
// can be retired. See docs/deployment.md.
//
// # Errors
//
// A ciphertext the key cannot open (another key's, tampered, not a
// ciphertext at all) gives an error wrapping [dek.ErrDecrypt]. A KMS that
// cannot be reached, times out, throttles, or refuses the caller gives an
// error that does not, so it is reported rather than taken for "wrong key".
// No error holds key material from a URL, or plaintext.
package kms

import (
	"cmp"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"

	"github.com/hashicorp/vault/api"
	"gocloud.dev/gcerrors"
	"gocloud.dev/secrets"

	// The drivers Open can reach.
	_ "gocloud.dev/secrets/awskms"
	_ "gocloud.dev/secrets/azurekeyvault"
	_ "gocloud.dev/secrets/gcpkms"
	_ "gocloud.dev/secrets/hashivault"
	_ "gocloud.dev/secrets/localsecrets"

	"github.com/gorm-envelope/envelope/dek"
)

// ErrURL reports a key URL that cannot be opened: not a URL, a scheme no
// linked driver serves, or a driver that refused it.
var ErrURL = errors.New("kms: cannot open key URL")

// Keeper is a master key held by a KMS: a [dek.Encrypter] over a
// *secrets.Keeper. It is safe for concurrent use. Printing it shows its
// [Keeper.ID], never the URL it was opened from.
type Keeper struct {
	k      *secrets.Keeper
	id     string
	secret []string // parts of the opening URL that no error may show
}

// New returns a Keeper over k, named id in status reports and errors (for
// example "awskms:prod-dek"). id must not hold key material. An empty id
// is "kms".
func New(k *secrets.Keeper, id string) *Keeper {
	if id == "" {
		id = "kms"
	}
	return &Keeper{k: k, id: id}
}

// IsURL reports whether a key entry is a KMS key URL rather than Fernet key
// text: it holds "://".
func IsURL(s string) bool { return strings.Contains(s, "://") }

// Open opens the master key at a key URL (see the package documentation
// for the schemes). The Keeper's ID is the scheme and a short SHA-256 of
// the URL, so two URLs give two IDs and neither is revealed.
//
// awskms:// URLs take the parameters of gocloud's awskms driver, but the
// Keeper names its key in every Decrypt: AWS would otherwise decrypt a DEK
// sealed under another AWS key the caller may use, and a rotation between
// two AWS keys would seem to have nothing to do.
//
// A base64key:// URL without a key is refused: gocloud would make a random
// key, lost when the process ends, along with every DEK sealed under it.
// Errors wrap [ErrURL] and never show the URL.
func Open(ctx context.Context, rawURL string) (*Keeper, error) {
	rawURL = strings.TrimSpace(rawURL)
	id := urlID(rawURL)
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme == "" {
		return nil, fmt.Errorf("%w: %s: not a URL", ErrURL, id)
	}
	scheme := strings.ToLower(u.Scheme)
	mux := secrets.DefaultURLMux()
	if !mux.ValidKeeperScheme(scheme) {
		return nil, fmt.Errorf("%w: %s: no driver for scheme %q (have %s)", ErrURL, id, scheme, strings.Join(mux.KeeperSchemes(), ", "))
	}
	if scheme == "base64key" && u.Host == "" {
		return nil, fmt.Errorf("%w: %s: base64key:// needs the key (a random one would be lost at exit)", ErrURL, id)
	}
	k := &Keeper{id: id, secret: secretParts(rawURL, u)}
	if scheme == "awskms" {
		k.k, err = openAWS(ctx, u)
	} else {
		k.k, err = mux.OpenKeeperURL(ctx, u)
	}
	if err != nil {
		return nil, &Error{Op: "open", ID: id, Err: err, msg: k.redact(err.Error()), url: true}
	}
	return k, nil
}

// OpenEncrypter is [Open] returning a [dek.Encrypter], the shape of the
// envelope command's KMS hook.
func OpenEncrypter(ctx context.Context, rawURL string) (dek.Encrypter, error) {
	k, err := Open(ctx, rawURL)
	if err != nil {
		return nil, err
	}
	return k, nil
}

// urlID is the printable name of a key URL: its scheme and the first four
// bytes of its SHA-256, in hex.
func urlID(rawURL string) string {
	scheme, _, ok := strings.Cut(rawURL, "://")
	if !ok || scheme == "" || strings.ContainsAny(scheme, " \t/?#@") {
		scheme = "url"
	}
	sum := sha256.Sum256([]byte(rawURL))
	return strings.ToLower(scheme) + ":" + hex.EncodeToString(sum[:4])
}

// secretParts lists what an error must not show of a URL: the URL itself,
// its user information, and its host, path and query values (a base64key://
// URL's host is the key). Parts shorter than a key are left out, so an
// error can still name a region or say "projects".
func secretParts(rawURL string, u *url.URL) []string {
	out := []string{rawURL, u.Redacted()}
	add := func(p string, min int) {
		if len(p) >= min {
			out = append(out, p, url.QueryEscape(p), url.PathEscape(p))
		}
	}
	if u.User != nil {
		add(u.User.String(), 1)
		if p, ok := u.User.Password(); ok {
			add(p, 1)
		}
	}
	for _, p := range []string{u.Host, u.Opaque, u.RawQuery, u.Path, strings.TrimPrefix(u.Path, "/")} {
		add(p, 16)
	}
	for _, vs := range u.Query() {
		for _, v := range vs {
			add(v, 16)
		}
	}
	// Longest first, so a part is never left half replaced.
	slices.SortFunc(out, func(a, b string) int {
		if c := cmp.Compare(len(b), len(a)); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
	return slices.Compact(out)
}

func (k *Keeper) redact(s string) string {
	for _, p := range k.secret {
		if p != "" {
			s = strings.ReplaceAll(s, p, "[redacted]")
		}
	}
	return s
}

// ID returns the key's printable name, safe to log: for a Keeper from
// [Open], the URL's scheme and a short hash of the URL, e.g.
// "awskms:1c0e9a42".
func (k *Keeper) ID() string { return k.id }

// String returns "kms.Keeper(ID)".
func (k *Keeper) String() string { return "kms.Keeper(" + k.id + ")" }

// GoString is String, so %#v does not print the URL either.
func (k *Keeper) GoString() string { return k.String() }

// Close releases the keeper's resources. The Keeper cannot be used after.
func (k *Keeper) Close() error {
	if err := k.k.Close(); err != nil {
		return k.wrap("close", err)
	}
	return nil
}

// Encrypt encrypts plaintext (a DEK's text) under the KMS key.
func (k *Keeper) Encrypt(ctx context.Context, plaintext []byte) ([]byte, error) {
	ct, err := k.k.Encrypt(ctx, plaintext)
	if err != nil {
		return nil, k.wrap("encrypt", err)
	}
	return ct, nil
}

// Decrypt decrypts a ciphertext made by Encrypt under the same KMS key. A
// ciphertext the key cannot open gives an error wrapping [dek.ErrDecrypt];
// a KMS that fails otherwise (unreachable, timeout, throttled, permission
// denied, key disabled) gives an [*Error] that does not.
//
// A Fernet token (a DEK sealed under a Fernet master key) is refused with
// dek.ErrDecrypt without calling the KMS: in a keyring that mixes the two,
// DEKs still under a Fernet key cost no KMS request.
func (k *Keeper) Decrypt(ctx context.Context, ciphertext []byte) ([]byte, error) {
	if isFernetToken(ciphertext) {
		return nil, fmt.Errorf("%w: %s: a Fernet token, not this KMS key's ciphertext", dek.ErrDecrypt, k.id)
	}
	pt, err := k.k.Decrypt(ctx, ciphertext)
	if err != nil {
		if notThisKey(err) {
			return nil, fmt.Errorf("%w: %s: %s", dek.ErrDecrypt, k.id, k.redact(err.Error()))
		}
		return nil, k.wrap("decrypt", err)
	}
	return pt, nil
}

func (k *Keeper) wrap(op string, err error) error {
	return &Error{Op: op, ID: k.id, Err: err, msg: k.redact(err.Error())}
}

// Error is a KMS failure other than a ciphertext the key cannot open: the
// KMS could not be reached, timed out, throttled the caller, refused it,
// or the key is disabled. Its message names the key by its ID and never
// shows key material.
type Error struct {
	Op  string // "open", "encrypt", "decrypt" or "close"
	ID  string // the key's ID
	Err error  // the keeper's error; use gcerrors.Code(err) to classify it

	msg string // Err's text with the URL's secrets removed
	url bool
}

func (e *Error) Error() string {
	if e.url {
		return fmt.Sprintf("%v: %s: %s", ErrURL, e.ID, e.msg)
	}
	return fmt.Sprintf("kms: %s with %s: %s", e.Op, e.ID, e.msg)
}

// Unwrap returns the keeper's error (and [ErrURL] for Open). Its own text
// is not redacted: print the Error, not what it wraps.
func (e *Error) Unwrap() []error {
	if e.url {
		return []error{ErrURL, e.Err}
	}
	return []error{e.Err}
}

// notThisKey reports whether a keeper's decrypt error means the ciphertext
// is not this key's (another key's, tampered, not a ciphertext), as
// opposed to a KMS that did not answer properly.
func notThisKey(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var ne net.Error
	if errors.As(err, &ne) {
		return false
	}
	// Vault's driver classifies nothing: read the HTTP status. 400 is its
	// answer to a ciphertext of another key or none.
	var ve *api.ResponseError
	if errors.As(err, &ve) {
		return ve.StatusCode == 400
	}
	switch gcerrors.Code(err) {
	case gcerrors.InvalidArgument:
		// AWS InvalidCiphertextException, Google's "ciphertext is invalid",
		// Azure's 400.
		return true
	case gcerrors.Unknown:
		// localsecrets' failed open, AWS's IncorrectKeyException and
		// AccessDenied for another account's key: no network error (above)
		// and no code.
		return true
	}
	return false
}

// isFernetToken reports whether b has the shape of a Fernet token: URL-safe
// base64 of version 0x80, 8 bytes of time, a 16-byte IV, whole AES blocks
// and a 32-byte HMAC. No KMS ciphertext has it: they are binary, or text
// with a prefix of their own (Vault's "vault:v1:").
func isFernetToken(b []byte) bool {
	const overhead = 1 + 8 + 16 + 32
	if len(b) < 4 || len(b)%4 != 0 {
		return false
	}
	raw := make([]byte, base64.URLEncoding.DecodedLen(len(b)))
	n, err := base64.URLEncoding.Strict().Decode(raw, b)
	if err != nil {
		return false
	}
	raw = raw[:n]
	return len(raw) >= overhead+16 && (len(raw)-overhead)%16 == 0 && raw[0] == 0x80
}
