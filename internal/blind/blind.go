package blind

import (
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"math"
	"strconv"
	"sync"
)

// RootKeySize is the size of a root key: a DEK's 32 raw bytes, or a global
// index key's.
const RootKeySize = 32

// The lengths an index value may have, in bits. Callers refuse others; see
// [CheckBits].
const MinBits, MaxBits = 1, 256

// info is the HKDF info prefix; the index's name follows it.
const info = "gorm-envelope blind index v1\x00"

// maxValueLen is the length of the longest stored value: a 10-digit
// version, ':' and 64 hex digits.
const maxValueLen = 10 + 1 + 2*sha256.Size

// CheckBits returns an error unless MinBits <= bits <= MaxBits.
func CheckBits(bits int) error {
	if bits < MinBits || bits > MaxBits {
		return fmt.Errorf("envelope: blind index length %d bits is out of range: want %d to %d", bits, MinBits, MaxBits)
	}
	return nil
}

// CheckVersion returns an error unless 1 <= version <= 2^31-1, the versions
// [Version] accepts.
func CheckVersion(version int) error {
	if version < 1 || version > math.MaxInt32 {
		return fmt.Errorf("envelope: blind index version %d is out of range: want 1 to %d", version, math.MaxInt32)
	}
	return nil
}

// Key is one index's hashing key, prepared once and safe for concurrent
// use. It holds HMAC-SHA256 states that have absorbed the padded key, so
// a value costs two SHA-256 compressions for a short plaintext and no
// rekeying.
type Key struct {
	// macs holds *macState, one per concurrent call. The key itself is
	// only in macs.New's closure and in the states: printing a Key with
	// fmt shows no key bytes.
	macs sync.Pool
}

// macState is the state of one call under a Key.
type macState struct {
	// HMAC-SHA256 under the index key. crypto/hmac's first Reset saves
	// the hash states after the inner and outer padded keys; every later
	// Reset and Sum restores them instead of hashing the pads again.
	mac hash.Hash
	sum [sha256.Size]byte
	buf [256]byte // the plaintext, a piece at a time; cleared after each call
}

// NewKey derives the key of the index called name from a 32-byte root key
// (an owner's DEK, or a global index key):
//
//	k = HKDF-SHA256(secret = root, salt = empty, info = "gorm-envelope blind index v1\x00" || name, length = 32)
//
// It returns an error if root is not 32 bytes or name is empty. root is
// not retained.
func NewKey(root []byte, name string) (*Key, error) {
	if len(root) != RootKeySize {
		return nil, fmt.Errorf("envelope: blind index root key is %d bytes, want %d", len(root), RootKeySize)
	}
	if name == "" {
		return nil, errors.New("envelope: blind index has no name")
	}
	k, err := hkdf.Key(sha256.New, root, nil, info+name, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("envelope: derive blind index key: %w", err)
	}
	key := &Key{}
	key.macs.New = func() any {
		st := &macState{mac: hmac.New(sha256.New, k)}
		st.mac.Reset() // saves the padded-key states
		return st
	}
	key.macs.Put(key.macs.New())
	return key, nil
}

// Value returns the stored index value of plain, which the index's
// [Transform] has already been applied to:
//
//	mac = HMAC-SHA256(k, plain)
//	kept = the first ceil(bits/8) bytes of mac, with the low 8*ceil(bits/8)-bits bits of the last one zeroed
//	stored = decimal(version) || ":" || lowercase hex(kept)
//
// It panics if [CheckBits](bits) or [CheckVersion](version) fails: callers
// check an index's configuration once, when it is declared.
func (k *Key) Value(version, bits int, plain string) string {
	var buf [maxValueLen]byte
	return string(k.AppendValue(buf[:0], version, bits, plain))
}

// AppendValue appends the stored index value of plain, as [Key.Value]
// returns it, to dst and returns the extended slice. It allocates only
// when dst has too little capacity.
func (k *Key) AppendValue(dst []byte, version, bits int, plain string) []byte {
	if bits < MinBits || bits > MaxBits {
		panic("blind: index length out of range")
	}
	if version < 1 || version > math.MaxInt32 {
		panic("blind: index version out of range")
	}
	st := k.macs.Get().(*macState)
	writeString(st, plain)
	st.mac.Sum(st.sum[:0])
	// Scrub the plaintext's last block from the inner hash's buffer
	// before the state goes back to the pool; the next call needs this
	// Reset anyway.
	st.mac.Reset()

	n := (bits + 7) / 8
	st.sum[n-1] &= byte(0xff << (8*n - bits))
	dst = strconv.AppendInt(dst, int64(version), 10)
	dst = append(dst, ':')
	dst = hex.AppendEncode(dst, st.sum[:n])
	clear(st.sum[:]) // the whole MAC says more than the index does
	k.macs.Put(st)
	return dst
}

// writeString feeds s to st's HMAC in pieces copied to st.buf, so that a
// string is hashed without converting it to a slice (which would allocate)
// and without package unsafe, then clears what it copied.
func writeString(st *macState, s string) {
	if len(s) == 0 {
		return
	}
	used := min(len(s), len(st.buf))
	for len(s) > 0 {
		n := copy(st.buf[:], s)
		st.mac.Write(st.buf[:n])
		s = s[n:]
	}
	clear(st.buf[:used])
}

// Version returns the version of a stored index value. ok is false unless
// stored is exactly what [Key.Value] writes: a decimal version from 1 to
// 2^31-1 without leading zeros, ':', then 2 to 64 lowercase hex digits, an
// even number of them.
func Version(stored string) (version int, ok bool) {
	i := 0
	for i < len(stored) && '0' <= stored[i] && stored[i] <= '9' {
		i++
	}
	if i == 0 || i > 10 || stored[0] == '0' || i == len(stored) || stored[i] != ':' {
		return 0, false
	}
	v, err := strconv.ParseInt(stored[:i], 10, 32)
	if err != nil {
		return 0, false
	}
	h := stored[i+1:]
	if len(h) < 2 || len(h) > 2*sha256.Size || len(h)%2 != 0 {
		return 0, false
	}
	for j := 0; j < len(h); j++ {
		if c := h[j]; !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return 0, false
		}
	}
	return int(v), true
}
