package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"github.com/gorm-envelope/envelope/dek"
)

// errNoKMS is the error for a key URL (--kms-url, or a URL in the key
// variables) in a build without KMS support.
var errNoKMS = errors.New("this build has no KMS support; use github.com/gorm-envelope/envelope/kms/cmd/envelope (see docs/deployment.md)")

// isURL reports whether key text names a key held in a KMS rather than
// being a Fernet key.
func isURL(text string) bool { return strings.Contains(text, "://") }

// keyset is master keys as text (Fernet keys or key URLs), primary first,
// with where they came from.
type keyset struct {
	source   string // "the environment" or the env file's path
	primary  string
	previous []string
}

// keysFrom reads DEK_ENCRYPTION_KEY and DEK_ENCRYPTION_KEY_PREVIOUS through
// lookup.
func keysFrom(source string, lookup func(string) (string, bool)) keyset {
	k := keyset{source: source}
	k.primary, _ = lookup(dek.EnvKey)
	k.primary = strings.TrimSpace(k.primary)
	prev, _ := lookup(dek.EnvKeyPrevious)
	for _, s := range strings.Split(prev, ",") {
		if s = strings.TrimSpace(s); s != "" {
			k.previous = append(k.previous, s)
		}
	}
	return k
}

// all returns the keys, primary first.
func (k keyset) all() []string { return append([]string{k.primary}, k.previous...) }

// keyRef is one key's text and where it came from, for errors; the text is
// never printed.
type keyRef struct{ text, source string }

// refs returns the keys, primary first, each named by its variable.
func (k keyset) refs() []keyRef {
	where := ""
	if k.source != "the environment" {
		where = k.source + ": "
	}
	refs := []keyRef{{k.primary, where + dek.EnvKey}}
	for i, p := range k.previous {
		refs = append(refs, keyRef{p, fmt.Sprintf("%s%s (entry %d)", where, dek.EnvKeyPrevious, i+1)})
	}
	return refs
}

// noKey is the error for a keyset without a primary key.
func (k keyset) noKey() error {
	if k.source == "the environment" {
		return dek.ErrNoKey
	}
	return fmt.Errorf("no %s in %s: %w", dek.EnvKey, k.source, dek.ErrNoKey)
}

// currentKeys returns the configured master keys: from --env-file when it
// sets DEK_ENCRYPTION_KEY, otherwise from the environment. If both set the
// keys they must agree, since rotate rewrites the file from what it read.
func (o *opts) currentKeys(e *env) (keyset, error) {
	envKeys := keysFrom("the environment", e.lookup)
	if o.envFile == "" {
		return envKeys, nil
	}
	vars, err := readEnvFile(o.envFile)
	if err != nil {
		return keyset{}, fmt.Errorf("read env file: %w", err)
	}
	fileKeys := keysFrom(o.envFile, func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	})
	if fileKeys.primary == "" {
		return envKeys, nil
	}
	if envKeys.primary != "" && !slices.Equal(envKeys.all(), fileKeys.all()) {
		return keyset{}, fmt.Errorf("the keys in the environment differ from those in %s: unset %s and %s, or make them agree", o.envFile, dek.EnvKey, dek.EnvKeyPrevious)
	}
	return fileKeys, nil
}

// kmsRef is the --kms-url key, or ok false when none is set.
func (o *opts) kmsRef() (keyRef, bool) {
	u := strings.TrimSpace(o.kmsURL)
	return keyRef{u, "--kms-url"}, u != ""
}

// keyring returns the keys status, verify and backfill work with: the
// configured keys, or, with --kms-url, the KMS key as primary and the
// configured keys as previous keys.
func (o *opts) keyring(ctx context.Context, e *env) (*dek.Keyring, error) {
	cur, err := o.currentKeys(e)
	if err != nil {
		return nil, err
	}
	refs := cur.refs()
	if k, ok := o.kmsRef(); ok {
		refs = withPrimary(k, refs)
	} else if cur.primary == "" {
		return nil, cur.noKey()
	}
	return o.openRing(ctx, e, refs)
}

// withPrimary returns refs with p first, without empty keys and without
// repeats of a key.
func withPrimary(p keyRef, refs []keyRef) []keyRef {
	return dedupe(append([]keyRef{p}, refs...))
}

// dedupe returns refs without empty keys and without repeats of a key.
func dedupe(refs []keyRef) []keyRef {
	var out []keyRef
	for _, r := range refs {
		if r.text != "" && !slices.ContainsFunc(out, func(x keyRef) bool { return x.text == r.text }) {
			out = append(out, r)
		}
	}
	return out
}

// openRing opens refs as a keyring, primary first.
func (o *opts) openRing(ctx context.Context, e *env, refs []keyRef) (*dek.Keyring, error) {
	keys := make([]dek.Encrypter, len(refs))
	for i, r := range refs {
		k, err := o.openKey(ctx, e, r)
		if err != nil {
			return nil, err
		}
		keys[i] = k
	}
	return dek.NewKeyring(keys[0], keys[1:]...)
}

// openKey parses a Fernet key, or opens a key URL through the build's
// OpenKMS. Each URL is opened once per command; keys that are io.Closers
// are closed by closeKeys. Errors name the key's source, never its text.
func (o *opts) openKey(ctx context.Context, e *env, r keyRef) (dek.Encrypter, error) {
	if !isURL(r.text) {
		k, err := dek.ParseKey(r.text)
		var ke *dek.KeyError
		if errors.As(err, &ke) {
			return nil, &dek.KeyError{Source: r.source, Reason: ke.Reason}
		}
		return k, err
	}
	if k, ok := o.opened[r.text]; ok {
		return k, nil
	}
	if e.ext.OpenKMS == nil {
		return nil, errNoKMS
	}
	k, err := e.ext.OpenKMS(ctx, r.text)
	if err == nil && k == nil {
		err = errors.New("no key")
	}
	if err != nil {
		return nil, fmt.Errorf("open the KMS key in %s: %s", r.source, redact(err.Error(), r.text))
	}
	if o.opened == nil {
		o.opened = map[string]dek.Encrypter{}
	}
	o.opened[r.text] = k
	return k, nil
}

// closeKeys closes the KMS keys the command opened.
func (o *opts) closeKeys() {
	for _, k := range o.opened {
		if c, ok := k.(io.Closer); ok {
			c.Close()
		}
	}
	o.opened = nil
}

// redact removes a key URL, and what follows its scheme, from an error
// message: a base64key:// URL is key material.
func redact(msg, url string) string {
	msg = strings.ReplaceAll(msg, url, "<key URL>")
	if _, rest, ok := strings.Cut(url, "://"); ok && len(rest) >= 8 {
		msg = strings.ReplaceAll(msg, rest, "<key URL>")
	}
	return msg
}
