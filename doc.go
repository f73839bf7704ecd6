// Package envelope is per-user envelope encryption for GORM.
//
// A master key (the DEK encryption key) encrypts one data-encryption key
// (DEK) per owner, stored in that owner's Profile row. Fields tagged
// gorm:"serializer:envelope" are encrypted with their owner's DEK on every
// GORM write path and decrypted on every read:
//
//	type Profile struct {
//		ID           uint
//		UserID       uint   `gorm:"uniqueIndex" envelope:"owner"`
//		EncryptedDEK []byte `envelope:"dek"`
//	}
//
//	type Credential struct {
//		ID       uint
//		UserID   uint    `envelope:"owner"`
//		Password string  `gorm:"serializer:envelope"`
//		APIKey   *string `gorm:"serializer:envelope"` // nil <-> NULL
//	}
//
//	keys, err := dek.KeyringFromEnv() // DEK_ENCRYPTION_KEY (+ DEK_ENCRYPTION_KEY_PREVIOUS)
//	err = db.Use(envelope.New(envelope.Config{Keys: keys, Profile: &Profile{}}))
//
// # Key management
//
// The master key never encrypts user data, only DEKs: rotating it (package
// rotate, or the envelope command) rewrites one column of the profiles
// table and nothing else. A DEK is created the first time an owner's data
// is written, exactly once even under concurrent writers, and cached in
// memory, bounded in count ([Config.CacheSize]) and lifetime
// ([Config.CacheTTL]). A DEK created inside a transaction is cached only
// once that transaction has committed; within a transaction the statement
// did not start, DEKs it loaded serve its later statements until it
// writes a profile. [Shred] destroys one owner's DEK,
// and with it that owner's data.
//
// # Formats
//
// Master keys and DEKs are Fernet keys (44 characters of URL-safe base64).
// The encrypted_dek column holds the Fernet token of the DEK's text under
// the master key; an encrypted field holds the Fernet token of its UTF-8
// value (or bytes) under the owner's DEK. This is the layout of TOM
// Toolkit's envelope encryption, so a Go service and the Python app can
// share one database.
//
// # Errors
//
// Statements fail with errors that errors.Is matches against [ErrNoKey],
// [ErrNoOwner], [ErrDecrypt], [ErrShredded] and [ErrUnsafe]; a value that
// cannot be read is left at its zero value, never as ciphertext, and
// [FieldError] names its model, field and owner. No error or log line holds
// a key, a DEK or plaintext.
//
// # What is not covered
//
// Paths on which GORM runs no query callbacks (Pluck, Row().Scan, Rows,
// Raw().Scan, ScanRows, Find into maps) return the stored tokens, never
// plaintext; such a token saved again is stored unchanged. Raw SQL is the
// caller's responsibility. See docs/security-model.md.
package envelope
