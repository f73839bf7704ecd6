// Package bound implements the bound value format: a field value encrypted
// with AES-256-GCM under a key derived from its owner's DEK, with the
// value's context — table, column, owner and, optionally, row — as
// associated data. A value opens only in the context it was sealed in.
//
// A raw value (what a []byte column stores) is
//
//	Version (0x81) || nonce (12 bytes) || ciphertext || tag (16 bytes)
//
// and its text (what a string column stores) is its URL-safe base64 without
// padding. [IsBound] tells either form from a Fernet token by its first
// byte, without decrypting. docs/format.md specifies the format byte by
// byte: the key derivation, the associated data, both forms.
//
// A [Cipher] is prepared once per DEK: New derives the key with HKDF-SHA256
// and prepares the AES-GCM (its key schedule and GHASH tables), so that a
// call costs one AES-GCM pass and no key setup. Per-call memory (the
// associated data, a parsed text) comes from a pool: [Cipher.Open] and
// [Cipher.OpenText] allocate only the plaintext they return, and nothing
// when the caller's buffer has room for it; Seal and SealText likewise.
//
// # What the binding protects
//
// Against someone who can write to the database but has neither the master
// key nor a DEK: a value copied into another column of its row, into another
// table, or into another owner's row does not open there; nor into another
// row of the same owner's, if it was bound to its row. Binding the owner as
// well as using the owner's DEK means that even a DEK copied from one
// Profile row into another does not make the first owner's values open as
// the second's.
//
// It does not stop a value from being replaced by an older value of the
// same field of the same row (a rollback), or deleted, or set to NULL; nor,
// for a value bound to no row, from being moved to the same field of
// another row of its owner. It does not hide a plaintext's length. And what
// is bound is names: renaming a table or column, changing a row's key or an
// owner's id makes the values bound to the old ones fail to open until they
// are sealed again under the new context.
//
// # Nonces
//
// Each value has a fresh 96-bit random nonce, drawn by Go's cryptographic
// module from crypto/rand's source. NIST SP 800-38D (§8.3) allows at most
// 2^32 encryptions under one key with random nonces, which keeps the chance
// that two share a nonce below 2^-32; about q^2/2^97 after q values, 2^-33 at
// the limit. A shared nonce would reveal the XOR of the two plaintexts and
// let the authentication key be recovered, for that one DEK.
//
// A DEK serves one owner, and every value sealed for that owner counts,
// rewrites too. An owner whose values are sealed 10 times a second, day and
// night, reaches 2^32 after 13.6 years; at 100 a second, after 1.4 years; a
// person saving a form a few times a day, never. The codec keeps no count
// (values are sealed by many processes). A deployment with an owner that
// could come near it, such as a service account writing hundreds of values
// a second, must give that owner a new DEK before then: seal all of the
// owner's values again under a fresh DEK, then shred the old one.
//
// There is no Seal with a caller's nonce, such as a caller sealing many
// values could fill from one read of crypto/rand. BenchmarkNonces measures
// what it would save: up to a quarter of a 32-byte Seal outside FIPS mode,
// under a hundred nanoseconds in a write that costs microseconds; more in
// FIPS mode, where only a nonce the module draws is an approved service.
// And a GCM nonce used twice gives away the authentication key, which would
// let values be forged in any context: not a risk worth that saving. The
// tests seal with given nonces, for the fixed vectors only.
//
// # Key commitment
//
// AES-GCM does not commit to its key: someone who knows two keys can craft
// one ciphertext that opens under both. That is acceptable here. Each value
// is opened under one key only, its owner's DEK, chosen by the row and not
// by the value; the keys are random DEKs that no attacker chooses and that
// never leave the process unencrypted; and crafting such a value needs both
// DEKs, with which an attacker could already seal anything for either
// owner — as he could with the master key, which opens every DEK. A key
// commitment would add bytes and a hash to every value to stop nothing.
//
// # FIPS 140-3
//
// All of it is Go's FIPS 140-3 module, through approved services: HKDF from
// crypto/hkdf, AES-GCM from crypto/cipher's NewGCMWithRandomNonce (the
// approved way to draw GCM nonces), so it runs unchanged under
// GODEBUG=fips140=on and fips140=only.
package bound
