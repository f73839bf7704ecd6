// Package blind computes blind indexes: keyed hashes of a transformed
// plaintext, stored in a plain column beside the encrypted one, so that rows
// can be found by the encrypted value without decrypting every row.
//
// A [Transform] normalises the plaintext (lower case, trimmed, NFC, digits
// only); a [Key], derived with HKDF-SHA256 from a 32-byte root key and the
// index's name, hashes it with HMAC-SHA256; [Key.Value] truncates the MAC to
// the index's length in bits and prefixes the index's version. A short
// index makes unequal plaintexts share index values, which is what keeps it
// from showing which rows hold equal plaintexts; [PlanBits] recommends a
// length for a table. The formats are specified byte by byte in
// docs/format.md.
package blind
