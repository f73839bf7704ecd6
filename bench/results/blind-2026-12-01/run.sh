#!/usr/bin/env bash
# Blind-index benchmarks, in interleaved rounds (one sample of each per
# round), from the repository root:
#
#   bash bench/results/blind-2026-12-01/run.sh [ROUNDS]
#
# Needs PostgreSQL (ENVELOPE_TEST_POSTGRES_DSN, default 127.0.0.1 postgres/test).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
rounds=${1:-6}
benchstat=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$root"
go test -c -o "$tmp/root.test" .
go test -c -o "$tmp/blind.test" ./internal/blind/
: >"$here/match.txt"; : >"$here/create.txt"; : >"$here/value.txt"
for r in $(seq "$rounds"); do
	echo "== round $r of $rounds"
	"$tmp/root.test" -test.run '^$' -test.bench '^BenchmarkMatch$' -test.benchtime 2000x -test.count 1 -test.benchmem >>"$here/match.txt"
	"$tmp/root.test" -test.run '^$' -test.bench '^BenchmarkCreateInBatchesIndexed$' -test.benchtime 10x -test.count 1 -test.benchmem >>"$here/create.txt"
	(cd internal/blind && "$tmp/blind.test" -test.run '^$' -test.bench . -test.count 1 -test.benchmem >>"$here/value.txt")
done
for f in match create value; do
	echo "== $f"
	go run "$benchstat" "$here/$f.txt"
done | tee "$here/benchstat.txt"
