// Package blind is a placeholder of the blind-index primitives.
package blind

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"strings"
)

const MinBits, MaxBits = 1, 256

type SpecError struct{ Step string }

func (e *SpecError) Error() string {
	return "envelope: unknown index transform " + strconv.Quote(e.Step)
}

type Transform struct{ steps []string }

func ParseTransform(spec string) (Transform, error) {
	var t Transform
	if spec == "" {
		return t, nil
	}
	for _, s := range strings.Split(spec, ",") {
		switch s {
		case "lower", "trim", "digits", "nfc":
			t.steps = append(t.steps, s)
		default:
			return Transform{}, &SpecError{Step: s}
		}
	}
	return t, nil
}

func (t Transform) Apply(s string) string {
	for _, st := range t.steps {
		switch st {
		case "lower":
			s = strings.ToLower(s)
		case "trim":
			s = strings.TrimSpace(s)
		case "digits":
			s = strings.Map(func(r rune) rune {
				if r >= '0' && r <= '9' {
					return r
				}
				return -1
			}, s)
		}
	}
	return s
}

func (t Transform) String() string { return strings.Join(t.steps, ",") }

func CheckBits(bits int) error {
	if bits < MinBits || bits > MaxBits {
		return errors.New("envelope: index bits must be between 1 and 256")
	}
	return nil
}

type Key struct{ k []byte }

func NewKey(root []byte, name string) (*Key, error) {
	if len(root) != 32 || name == "" {
		return nil, errors.New("envelope: bad index key")
	}
	k, err := hkdf.Key(sha256.New, root, nil, "gorm-envelope blind index v1\x00"+name, 32)
	if err != nil {
		return nil, err
	}
	return &Key{k: k}, nil
}

func (k *Key) Value(version, bits int, plain string) string {
	return string(k.AppendValue(nil, version, bits, plain))
}

func (k *Key) AppendValue(dst []byte, version, bits int, plain string) []byte {
	h := hmac.New(sha256.New, k.k)
	h.Write([]byte(plain))
	sum := h.Sum(nil)
	n := (bits + 7) / 8
	b := sum[:n]
	if r := n*8 - bits; r > 0 {
		b[n-1] &^= byte(1<<r - 1)
	}
	dst = strconv.AppendInt(dst, int64(version), 10)
	dst = append(dst, ':')
	return hex.AppendEncode(dst, b)
}

func Version(stored string) (int, bool) {
	i := strings.IndexByte(stored, ':')
	if i <= 0 {
		return 0, false
	}
	v, err := strconv.Atoi(stored[:i])
	return v, err == nil && v > 0
}
