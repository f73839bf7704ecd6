// Package token implements the Fernet token format used for both DEKs and
// field values: base64url(0x80 | timestamp | IV | AES-128-CBC(PKCS7(msg)) | HMAC-SHA256).
//
// All its cryptography is Go's own: AES-CBC from crypto/aes and
// crypto/cipher, HMAC-SHA256 from crypto/hmac and crypto/sha256, IVs from
// crypto/rand. These are Go's FIPS 140-3 module, used through its approved
// services, so the codec runs unchanged under GODEBUG=fips140=on.
//
// A Cipher holds what is prepared from one 32-byte Fernet key (the AES key
// schedule; HMACs that have absorbed the padded signing key, and CBC modes,
// kept in a pool for reuse) and is safe for concurrent use. Per-call scratch
// memory comes from pools, so Encrypt and Decrypt allocate only the slice
// they return.
package token

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"hash"
	"slices"
	"sync"
	"time"

	"github.com/gorm-envelope/envelope/internal/b64"
)

// KeySize is the size of a raw Fernet key: 16 bytes of HMAC key, 16 of AES key.
const KeySize = 32

// MinLen is the length of the shortest token text: an empty message still
// has one block of padding (1+8+16+16+32 = 73 bytes, 100 base64 characters).
const MinLen = 100

// ErrInvalid is returned for any token that does not verify under the key:
// wrong key, tampered, truncated, or not a token at all.
var ErrInvalid = errors.New("invalid token")

const (
	version   = 0x80
	blockSize = aes.BlockSize // 16
	macSize   = sha256.Size   // 32
	tsOff     = 1
	ivOff     = tsOff + 8
	ctOff     = ivOff + blockSize
	overhead  = ctOff + macSize // 57 bytes around the ciphertext

	// Scratch buffers larger than this are not kept in the pool, so one
	// huge token does not pin a large buffer for the life of the process.
	maxPooled = 64 << 10
)

// Cipher encrypts and decrypts Fernet tokens under one key.
type Cipher struct {
	block cipher.Block // AES-128 with the encryption half of the key
	// keyStates (*keyState) for one call at a time. Making a CBC mode
	// copies the key schedule and allocates, and a fresh HMAC absorbs the
	// padded key again: each is made once and reused, as crypto/tls does.
	states sync.Pool
}

// keyState is the state of one call under a Cipher's key. It holds no
// plaintext: the modes keep only an IV or a ciphertext block, the HMAC the
// hash of token bytes.
type keyState struct {
	// HMAC-SHA256 under the signing key. Reset restores the state after
	// the padded key, which crypto/hmac saves on its first Reset.
	mac      hash.Hash
	sum      [macSize]byte
	enc, dec cipher.BlockMode // crypto/cipher's CBC over the Cipher's block
}

// ivSetter is how crypto/cipher's CBC modes take a new IV (crypto/tls relies
// on it too). A mode without it is made afresh for each call.
type ivSetter interface{ SetIV(iv []byte) }

// New prepares a Cipher for key.
func New(key [KeySize]byte) *Cipher {
	block, err := aes.NewCipher(key[16:])
	if err != nil { // cannot happen for a 16-byte key
		panic("token: " + err.Error())
	}
	signKey := [16]byte(key[:16])
	c := &Cipher{block: block}
	c.states.New = func() any {
		k := &keyState{mac: hmac.New(sha256.New, signKey[:])}
		k.mac.Reset()
		iv := make([]byte, blockSize)
		k.enc, k.dec = cipher.NewCBCEncrypter(block, iv), cipher.NewCBCDecrypter(block, iv)
		return k
	}
	return c
}

// mac256 computes HMAC-SHA256(signing key, data) into k.sum.
func (k *keyState) mac256(data []byte) {
	k.mac.Reset()
	k.mac.Write(data)
	k.mac.Sum(k.sum[:0])
}

// cbc runs CBC encryption or decryption of src into dst under iv.
func (c *Cipher) cbc(k *keyState, decrypt bool, dst, src, iv []byte) {
	mode, newMode := k.enc, cipher.NewCBCEncrypter
	if decrypt {
		mode, newMode = k.dec, cipher.NewCBCDecrypter
	}
	if m, ok := mode.(ivSetter); ok {
		m.SetIV(iv)
	} else {
		mode = newMode(c.block, iv)
	}
	mode.CryptBlocks(dst, src)
}

// scratch is the per-call working memory, shared by all keys. It never
// keeps plaintext: Encrypt encrypts in place and Decrypt writes plaintext
// only to the returned slice.
type scratch struct {
	buf []byte // raw (decoded) token bytes
}

var scratchPool = sync.Pool{
	New: func() any { return new(scratch) },
}

func getScratch(n int) *scratch {
	s := scratchPool.Get().(*scratch)
	if cap(s.buf) < n {
		s.buf = make([]byte, n)
	}
	s.buf = s.buf[:n]
	return s
}

func putScratch(s *scratch) {
	if cap(s.buf) > maxPooled {
		s.buf = nil
	}
	scratchPool.Put(s)
}

// Encrypt returns the token text for msg.
func (c *Cipher) Encrypt(msg []byte) ([]byte, error) {
	return c.seal(nil, msg, time.Now().Unix(), nil)
}

// EncryptAt returns the token text for msg with the given timestamp.
func (c *Cipher) EncryptAt(msg []byte, at time.Time) ([]byte, error) {
	return c.seal(nil, msg, at.Unix(), nil)
}

// IVSize is the length of a token's IV.
const IVSize = blockSize

// EncryptIV returns the token text for msg with timestamp ts (Unix
// seconds) and the given IV. The IV must come from a cryptographically
// secure source and never be used twice: this lets a caller that encrypts
// many values read all their IVs from crypto/rand at once and read the
// clock once.
func (c *Cipher) EncryptIV(msg []byte, ts int64, iv *[IVSize]byte) ([]byte, error) {
	return c.seal(nil, msg, ts, iv)
}

// AppendEncryptIV is EncryptIV appending the token text to dst, so that a
// caller can carve many tokens from one buffer.
func (c *Cipher) AppendEncryptIV(dst, msg []byte, ts int64, iv *[IVSize]byte) ([]byte, error) {
	return c.seal(dst, msg, ts, iv)
}

// EncryptedLen is the length of the token text for a message of n bytes.
func EncryptedLen(n int) int {
	return b64.EncodedLen(overhead + (n/blockSize+1)*blockSize)
}

// seal appends the token for msg to dst; a nil iv means a random one.
func (c *Cipher) seal(dst, msg []byte, ts int64, iv *[blockSize]byte) ([]byte, error) {
	padded := (len(msg)/blockSize + 1) * blockSize
	n := overhead + padded
	s := getScratch(n)
	defer putScratch(s)
	raw := s.buf

	raw[0] = version
	binary.BigEndian.PutUint64(raw[tsOff:], uint64(ts))
	if iv != nil {
		copy(raw[ivOff:ctOff], iv[:])
	} else if _, err := rand.Read(raw[ivOff:ctOff]); err != nil {
		return nil, err
	}

	// PKCS #7 pad, then AES-CBC in place.
	ct := raw[ctOff : ctOff+padded]
	copy(ct, msg)
	p := byte(padded - len(msg))
	for i := len(msg); i < padded; i++ {
		ct[i] = p
	}
	k := c.states.Get().(*keyState)
	c.cbc(k, false, ct, ct, raw[ivOff:ctOff])
	k.mac256(raw[:n-macSize])
	copy(raw[n-macSize:], k.sum[:])
	c.states.Put(k)

	m := b64.EncodedLen(n)
	if len(dst)+m > cap(dst) {
		dst = slices.Grow(dst, m)
	}
	out := dst[len(dst) : len(dst)+m]
	b64.Encode(out, raw)
	return dst[:len(dst)+m], nil
}

// Decrypt verifies tok and returns its message, or ErrInvalid.
// An empty message decrypts to a non-nil empty slice.
func (c *Cipher) Decrypt(tok []byte) ([]byte, error) {
	out, err := c.open(nil, tok)
	if err != nil {
		return nil, err
	}
	return out[:len(out):len(out)], nil
}

// AppendDecrypt appends the message of tok to dst, so that a caller can
// decrypt many tokens into one buffer. On error dst is returned unchanged.
// A message takes at most DecryptedLen(len(tok)) bytes of dst.
func (c *Cipher) AppendDecrypt(dst, tok []byte) ([]byte, error) {
	return c.open(dst, tok)
}

// DecryptedLen bounds the length of the message of a token text of n bytes.
func DecryptedLen(n int) int { return max(n/4*3-overhead, 0) }

// open appends the message of tok to dst.
func (c *Cipher) open(dst, tok []byte) ([]byte, error) {
	if len(tok) < MinLen {
		return dst, ErrInvalid
	}
	s := getScratch(b64.DecodeBuf(len(tok)))
	defer putScratch(s)
	n, ok := b64.Decode(s.buf, tok)
	if !ok || n < overhead+blockSize || (n-overhead)%blockSize != 0 {
		return dst, ErrInvalid
	}
	raw := s.buf[:n]
	if raw[0] != version {
		return dst, ErrInvalid
	}

	// Authenticate before touching the ciphertext.
	k := c.states.Get().(*keyState)
	defer c.states.Put(k)
	k.mac256(raw[:n-macSize])
	if subtle.ConstantTimeCompare(k.sum[:], raw[n-macSize:]) != 1 {
		return dst, ErrInvalid
	}

	ct := raw[ctOff : n-macSize]
	base := len(dst)
	dst = slices.Grow(dst, len(ct))
	out := dst[base : base+len(ct)]
	c.cbc(k, true, out, ct, raw[ivOff:ctOff])

	// PKCS #7: the MAC already held, so this check leaks nothing new.
	p := int(out[len(out)-1])
	if p == 0 || p > blockSize {
		clear(out)
		return dst[:base], ErrInvalid
	}
	m := len(out) - p
	for _, b := range out[m:] {
		if int(b) != p {
			clear(out)
			return dst[:base], ErrInvalid
		}
	}
	return dst[:base+m], nil
}

// LooksLike reports whether b has the shape of a Fernet token text: the
// version byte and a plausible length. It says nothing about validity.
func LooksLike(b []byte) bool {
	return len(b) >= MinLen && len(b)%4 == 0 && b[0] == 'g' && b[1] == 'A'
}

// LooksLikeString is LooksLike for a string, without copying.
func LooksLikeString(s string) bool {
	return len(s) >= MinLen && len(s)%4 == 0 && s[0] == 'g' && s[1] == 'A'
}
