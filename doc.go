// Package envelope is per-user envelope encryption for GORM.
//
// A master key (the DEK encryption key) encrypts one data-encryption key
// (DEK) per owner, stored in that owner's Profile row. Fields tagged
// gorm:"serializer:envelope" are encrypted with their owner's DEK on every
// GORM write path and decrypted by the queries that fill the model's
// structs:
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
// A model's owner field is an integer if the Profile's is, a string if the
// Profile's is; the Profile model has no encrypted fields. A model may be
// owned by its own auto-increment primary key (a users table encrypting
// the user's own fields): its encrypted columns are sealed by an UPDATE
// right after the INSERT, in the same transaction. One [Plugin] serves one
// *gorm.DB and its sessions; a *gorm.DB without the plugin refuses
// encrypted writes.
//
// # Owner integrity
//
// After any statement the plugin lets through, every encrypted value of
// every row the statement touched opens under the DEK of the row's owner
// as stored after the statement. A partial update that moves or clears the
// owner without rewriting every encrypted column (as GORM's association
// Clear, Delete and Replace do to an owner foreign key) and an upsert whose
// conflict target does not determine the owner are refused with
// [ErrUnsafe] before the statement is sent. A partial update is pinned to
// the owner of the model it is given; Save of the full row may move the row
// to another owner. See docs/security-model.md.
//
// # Key management
//
// The master key never encrypts user data, only DEKs: rotating it (package
// rotate, or the envelope command) rewrites one column of the profiles
// table and nothing else. A DEK is created the first time an owner's data
// is written, exactly once even under concurrent writers, and cached in
// memory, bounded in count ([Config.CacheSize]) and lifetime
// ([Config.CacheTTL]). The DEK is created inside the statement's
// transaction, and DEK creators are serialized by a lock held until their
// transaction ends (a transaction-level advisory lock on PostgreSQL, a row
// of the table envelope_locks on MySQL, which db.Use creates if it may), so
// overlapping first writes do not deadlock; see docs/deployment.md. A DEK
// created inside a transaction is cached only once that transaction has
// committed; within a transaction the statement did not start, DEKs it
// loaded serve its later statements until it writes a profile. [Shred]
// destroys one owner's DEK, and with it that owner's data; deleting the
// owner's profile row through GORM afterwards (Unscoped, for a soft-delete
// Profile model) lets the next write create a new DEK. [Rekey] gives one
// owner a new DEK and seals the owner's values again under it, and
// [RekeyAll] every owner, for after a DEK or the master key leaked
// (rotation does not change the DEKs): see docs/key-management.md,
// "Rekeying owners".
//
// # Formats
//
// Master keys and DEKs are Fernet keys (44 characters of URL-safe base64).
// The encrypted_dek column holds the Fernet token of the DEK's text under
// the master key; an encrypted field holds the Fernet token of its UTF-8
// value (or bytes) under the owner's DEK. This is the token format and
// per-user Profile layout of TOM Toolkit's envelope design (TOM Toolkit PR
// #1489, merged into its 3.0 alpha branch), so a Go service and a Python
// app using that design can share one database. TOM 3.0 alpha later
// replaced it with one Fernet key derived from Django's SECRET_KEY, which
// is not per user and not a format this package writes; [Reseal] with
// [TOMToolkitDecoder] imports such values into per-owner DEKs.
//
// With Config.Format set to [FormatBound], new values are bound values
// instead: AES-256-GCM under a key derived from the owner's DEK, with the
// table, column and owner (and, for a model whose primary key is tagged
// envelope:"row", the row) as associated data, so a value copied anywhere
// else does not open. Reads accept both formats in every configuration;
// [Reseal] rewrites a table's stored values in the configured format.
// docs/format.md specifies both byte by byte.
//
// With [Config.BindDEKs], new DEKs are instead encrypted together with
// their owner and the profile table's name, so that a DEK copied into
// another owner's profile does not open (docs/format.md, "Owner-bound
// DEKs"). TOM Toolkit cannot read such a DEK, so it is off by default;
// DEKs of both layouts are read whatever the setting. FormatBound implies
// it: TOM Toolkit reads no bound value either.
//
// # Errors
//
// Statements fail with errors that errors.Is matches against [ErrNoKey],
// [ErrNoOwner], [ErrDecrypt], [ErrShredded], [ErrUnsafe] and
// [ErrConflict]; a value that cannot be read is left at its zero value,
// never as ciphertext, and [FieldError] names its model, field and owner.
// With no master key, every write of an encrypted value and every read of
// a non-NULL one fails with ErrNoKey. ErrConflict reports a deadlock or
// serialization failure while the plugin created a DEK inside a
// transaction, or a snapshot older than another transaction's new DEK:
// retry the statement or its transaction. No error or log line holds a
// key, a DEK or plaintext.
//
// # Blind indexes
//
// Encrypted columns cannot be compared, but a plain column tagged
// envelope:"index:Email" holds a keyed hash of the field's value, written
// with it on every write path, and [Match] (or [MatchOwner]) finds rows by
// a value through it:
//
//	type User struct {
//		ID       uint    `envelope:"owner"`
//		Email    string  `gorm:"serializer:envelope"`
//		EmailIdx *string `gorm:"size:80;uniqueIndex" envelope:"index:Email;scope:global;transform:trim,lower"`
//	}
//
//	err := db.Where(envelope.Match("Email", "ada@example.org")).First(&u).Error
//
// An index is global (one key per index, kept wrapped in the table
// envelope_index_keys) or per owner (derived from the owner's DEK), full
// length or truncated ([PlanIndex]); a caller gets exactly the rows whose
// value matches, truncated or not. [Reindex] fills an index added to a
// table with rows, and rotates a global index's key in place. The format
// is in docs/format.md, what an index leaks in docs/security-model.md.
//
// # What is not covered
//
// Paths on which GORM runs no query callbacks (Pluck, Row().Scan, Rows,
// Scan, ScanRows, Find into maps), and Find into a struct type whose
// fields are not tagged serializer:envelope, return the stored tokens,
// never plaintext; such a token saved again is stored unchanged. Encrypted
// columns cannot be compared or ordered by: struct and map conditions and
// ORDER BY on them are refused (use a blind index to find rows by value). Raw SQL is the caller's responsibility.
// See docs/security-model.md.
package envelope
