// Package rotate re-encrypts every Profile DEK under a keyring's primary
// master key, and counts DEKs by the key that opens them.
//
// Rotating the master key rewrites only the Profile table's DEK column (and
// the wrapped blind-index keys, see below): the app's encrypted data is
// under the DEKs, which do not change, so it is never read or written.
//
// # Safety
//
// [Run] reads profiles in primary key order, a batch at a time (keyset
// pagination, so memory is flat in the number of profiles). For each batch
// it opens every DEK with the keyring, seals it under the primary key,
// checks that the result opens under the primary key alone to the same DEK,
// and writes the batch in one short transaction with a compare-and-swap:
// a row is updated only where it still holds the exact value that was
// read. So:
//
//   - every DEK opens under the keyring at every instant: a run killed at any
//     point loses nothing, and running it again finishes the rest;
//   - a second run rotates nothing (DEKs already under the primary key are
//     counted in [Result].AlreadyCurrent);
//   - a concurrent change (the app creating a DEK, a crypto-shred) is never
//     overwritten: the row is read again and handled as it now is;
//   - a DEK no key opens is reported by owner in [Result].Failures, the rest
//     are still rotated, and Run returns a [*FailedError];
//   - crypto-shredded DEKs (see [dek.IsTombstone]) and empty ones are left
//     alone and counted.
//
// The master key itself must be recorded (the app's environment, a secret
// store) before Run writes any DEK under it: the envelope command does that
// for you (envelope rotate --env-file). See docs/key-management.md.
//
// # Blind-index keys
//
// The keys of global blind indexes, in the table envelope_index_keys, are
// wrapped under the master key as DEKs are. When the database has that
// table, [Run] rewraps every row of it too, after the profiles, with the
// same guarantees (batches, the check, the compare-and-swap, dry runs,
// reruns), and [Status] and [Verify] count them per key. Only the wrapping
// changes: the 32 bytes of each key stay the same, so no index value
// changes. They are counted apart, in the fields of [Result] and
// [StatusResult] named Index…; a failure names the index and version
// ([Failure].Index).
//
// # Dialects
//
// On PostgreSQL a batch is written with a single UPDATE … FROM unnest(…)
// of three array parameters, and the next batches are read and decrypted
// while earlier ones are being written, three at a time. On MySQL and
// MariaDB a batch is written with one multi-table UPDATE joining the table
// to a derived table of the batch's (id, new, old) rows, 1000 rows per
// statement; the affected-row count, and when it falls short a read-back in
// the same transaction, says which rows were written. That measured about
// four to five times faster than one UPDATE per row. SQLite, and non-integer
// primary keys anywhere, use one prepared conditional UPDATE per row inside
// the batch's transaction, one batch at a time; on SQLite that measured
// three times faster than one UPDATE … FROM (VALUES …) per batch.
//
// # Status
//
// [Status] opens every DEK and counts them per key of the keyring: when no
// DEK is left under a previous key, that key can be retired. [Verify] is
// Status that returns an error if any DEK cannot be opened. [Backfill] gives
// a DEK to every profile that has none.
package rotate
