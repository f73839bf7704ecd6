// Package bench compares the envelope plugin with plain GORM, with two
// peer libraries that encrypt under one global key
// (github.com/pkasila/gorm-crypto and github.com/bincyber/go-sqlcrypter),
// and with a per-row approach that looks up and decrypts the owner's DEK
// once per row. It is a module of its own so that the peers never enter
// the library's go.mod. Run ./run.sh; the results are in
// ../docs/performance.md.
package bench
