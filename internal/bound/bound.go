package bound

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"slices"
	"sync"
)

// Version is the first byte of every bound value, raw or decoded from its
// text form. Fernet tokens start with 0x80.
const Version byte = 0x81

// DEKSize is the size of a raw DEK: the 32 bytes its 44-character text
// decodes to.
const DEKSize = 32

// NonceSize and TagSize are the lengths of a value's GCM nonce and tag.
const (
	NonceSize = 12
	TagSize   = 16
)

// Overhead is how much longer a raw value is than its plaintext: the
// version byte, the nonce and the tag.
const Overhead = 1 + NonceSize + TagSize

// info is the HKDF info that derives a DEK's bound-value key.
const info = "gorm-envelope bound value v1"

// ErrInvalid is returned for any value that does not open under the key and
// context: wrong DEK, another context, tampered, truncated, or not a bound
// value at all.
var ErrInvalid = errors.New("invalid bound value")

// Context is what a value is bound to. The same fields, byte for byte, must
// be given to open it.
type Context struct {
	Table, Column string
	// Owner is the owner's id: decimal text for an integer id (no sign
	// for non-negative, no leading zero), else the string itself.
	Owner string
	// Row is the row's primary key as text, formatted like Owner; ""
	// binds the value to no row.
	Row string
}

// Cipher seals and opens bound values under one DEK. It is safe for
// concurrent use.
type Cipher struct {
	// AES-256-GCM under the derived key, with nonces drawn by Go's
	// cryptographic module: Seal prepends the nonce, Open reads it there.
	aead cipher.AEAD
}

// New prepares a Cipher for dek, deriving its key once:
//
//	key = HKDF-SHA256(IKM = dek, salt = empty, info = "gorm-envelope bound value v1", L = 32)
//
// and preparing AES-256-GCM under it. dek is not retained.
func New(dek [DEKSize]byte) *Cipher {
	key, err := hkdf.Key(sha256.New, dek[:], nil, info, 32)
	if err != nil { // cannot happen for a 32-byte key and output
		panic("bound: " + err.Error())
	}
	defer clear(key)
	block, err := aes.NewCipher(key)
	if err != nil { // cannot happen for a 32-byte key
		panic("bound: " + err.Error())
	}
	aead, err := cipher.NewGCMWithRandomNonce(block)
	if err != nil { // cannot happen for an AES block
		panic("bound: " + err.Error())
	}
	return &Cipher{aead: aead}
}

// Seal appends the raw value of plaintext, bound to ctx, to dst and returns
// the extended slice: Version, a random nonce, the ciphertext and the tag,
// len(plaintext)+[Overhead] bytes in all. It allocates only when dst has
// too little capacity. dst's spare capacity must not overlap plaintext.
//
// It refuses a nil ctx and one without a table, column or owner: a value
// bound to nothing could be moved anywhere.
func (c *Cipher) Seal(dst, plaintext []byte, ctx *Context) ([]byte, error) {
	if err := checkContext(ctx); err != nil {
		return dst, err
	}
	s := getScratch()
	defer putScratch(s)
	s.aad = appendAAD(s.aad[:0], ctx)
	return c.seal(dst, plaintext, s.aad), nil
}

// seal appends the raw value of plaintext under aad to dst.
func (c *Cipher) seal(dst, plaintext, aad []byte) []byte {
	dst = slices.Grow(dst, len(plaintext)+Overhead)
	dst = append(dst, Version)
	// The nonce comes from Go's FIPS 140-3 module: crypto/rand's source,
	// read through the module's approved random-nonce GCM service.
	return c.aead.Seal(dst, nil, plaintext, aad)
}

// Open verifies value, a raw value bound to ctx, and appends its plaintext
// to dst, or returns dst unchanged and ErrInvalid. An empty plaintext
// opens to a non-nil empty slice. It allocates only when dst has less than
// len(value)-[Overhead] bytes of spare capacity, which must not overlap
// value. On failure no plaintext is left in that capacity.
func (c *Cipher) Open(dst, value []byte, ctx *Context) ([]byte, error) {
	if len(value) < Overhead || value[0] != Version || ctx == nil {
		return dst, ErrInvalid
	}
	s := getScratch()
	defer putScratch(s)
	s.aad = appendAAD(s.aad[:0], ctx)
	return c.open(dst, value, s.aad)
}

// open opens value, whose version byte is checked, under aad.
func (c *Cipher) open(dst, value, aad []byte) ([]byte, error) {
	out, err := c.aead.Open(dst, nil, value[1:], aad)
	if err != nil {
		return dst, ErrInvalid
	}
	if out == nil {
		out = []byte{}
	}
	return out, nil
}

// SealText appends the text form of the value Seal makes to dst: what a
// string column stores. It allocates only when dst has less than
// TextLen(len(plaintext)+Overhead) bytes of spare capacity.
func (c *Cipher) SealText(dst, plaintext []byte, ctx *Context) ([]byte, error) {
	if err := checkContext(ctx); err != nil {
		return dst, err
	}
	s := getScratch()
	defer putScratch(s)
	s.aad = appendAAD(s.aad[:0], ctx)
	// The raw value is ciphertext only: scratch never holds plaintext.
	s.raw = c.seal(s.raw[:0], plaintext, s.aad)
	return AppendText(dst, s.raw), nil
}

// OpenText is Open of the raw value whose text form is text, as
// [ParseText] reads it, without allocating for the raw value: it allocates
// only when dst has too little spare capacity for the plaintext.
func (c *Cipher) OpenText(dst, text []byte, ctx *Context) ([]byte, error) {
	if ctx == nil {
		return dst, ErrInvalid
	}
	s := getScratch()
	defer putScratch(s)
	var ok bool
	if s.raw, ok = appendParse(s.raw[:0], text); !ok {
		return dst, ErrInvalid
	}
	s.aad = appendAAD(s.aad[:0], ctx)
	return c.open(dst, s.raw, s.aad)
}

// checkContext returns an error unless ctx names a table, a column and an
// owner. It names the missing field, never a value.
func checkContext(ctx *Context) error {
	switch {
	case ctx == nil:
		return errors.New("bound: no context to bind the value to")
	case ctx.Table == "":
		return errors.New("bound: context has no table")
	case ctx.Column == "":
		return errors.New("bound: context has no column")
	case ctx.Owner == "":
		return errors.New("bound: context has no owner")
	}
	return nil
}

// appendAAD appends the associated data of ctx to dst:
//
//	Version || field(Table) || field(Column) || field(Owner) || 0x00            (no row)
//	Version || field(Table) || field(Column) || field(Owner) || 0x01 || field(Row)
//
// where field(s) is uvarint(len(s)) || s. Each field's length comes before
// it and the flag says whether a row follows, so the bytes determine the
// context: no two contexts share associated data.
func appendAAD(dst []byte, ctx *Context) []byte {
	dst = append(dst, Version)
	dst = appendField(dst, ctx.Table)
	dst = appendField(dst, ctx.Column)
	dst = appendField(dst, ctx.Owner)
	if ctx.Row == "" {
		return append(dst, 0)
	}
	return appendField(append(dst, 1), ctx.Row)
}

func appendField(dst []byte, s string) []byte {
	if len(s) < 0x80 { // the usual case: a one-byte length
		return append(append(dst, byte(len(s))), s...)
	}
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

// scratch is per-call working memory, shared by all Ciphers. It holds
// associated data and raw values, never plaintext.
type scratch struct {
	aad, raw []byte
}

// Scratch buffers larger than this are not kept in the pool, so one huge
// value does not pin a large buffer for the life of the process.
const maxPooled = 64 << 10

var scratchPool = sync.Pool{
	New: func() any { return &scratch{aad: make([]byte, 0, 128)} },
}

func getScratch() *scratch { return scratchPool.Get().(*scratch) }

func putScratch(s *scratch) {
	if cap(s.raw) > maxPooled {
		s.raw = nil
	}
	if cap(s.aad) > maxPooled {
		s.aad = make([]byte, 0, 128)
	}
	scratchPool.Put(s)
}
