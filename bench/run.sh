#!/usr/bin/env bash
# Runs the benchmarks recorded in docs/performance.md and prints benchstat
# tables and the targets check.
#
#   bench/run.sh [OUTDIR]        (default OUTDIR: bench/results)
#
# Environment: COUNT (default 6), BENCHTIME for the 10k-row benchmarks
# (default 10x), ENVELOPE_TEST_POSTGRES_DSN (default
# "host=127.0.0.1 user=postgres dbname=test sslmode=disable"; PostgreSQL is
# skipped when unreachable). Takes about 10 minutes on 2 cores.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
out=${1:-$here/results}
count=${COUNT:-6}
benchtime=${BENCHTIME:-10x}
benchstat=golang.org/x/perf/cmd/benchstat@v0.0.0-20260908200009-22c9c6c9d4da

mkdir -p "$out"
out=$(cd "$out" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

{
	echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $(go version)"
	echo "# nproc: $(nproc); cpu: $(lscpu 2>/dev/null | sed -n 's/^Model name: *//p')"
	echo "# load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} >"$out/machine.txt"
cat "$out/machine.txt"

# The samples are taken in rounds: each round runs every benchmark once
# (-count 1), so that a slow spell of a shared machine falls on all the
# implementations of a round alike instead of on the six samples of one.
(cd "$here" && go test -c -o "$tmp/bench.test" .)
(cd "$root" && go test -c -o "$tmp/token.test" ./internal/token/)
(cd "$root" && go test -c -o "$tmp/bound.test" ./internal/bound/)
: >"$out/bench.txt"
: >"$out/codec.txt"
: >"$out/bound.txt"
for round in $(seq "$count"); do
	echo "== round $round of $count: Find and CreateInBatches (bench/, -benchtime $benchtime)"
	(cd "$here" && "$tmp/bench.test" -test.run '^$' -test.bench . -test.benchmem -test.count 1 \
		-test.benchtime "$benchtime" -test.timeout 60m) | tee -a "$out/bench.txt"
	echo "== round $round of $count: codec (internal/token)"
	(cd "$root/internal/token" && "$tmp/token.test" -test.run '^$' -test.bench '^Benchmark(Decrypt|Encrypt)$' \
		-test.benchmem -test.count 1) | tee -a "$out/codec.txt"
	echo "== round $round of $count: bound values against Fernet (internal/bound)"
	(cd "$root/internal/bound" && "$tmp/bound.test" -test.run '^$' -test.bench '^BenchmarkOpen$' \
		-test.benchmem -test.count 1) | tee -a "$out/bound.txt"
done

# benchstat compares columns by key=value sub-benchmark names: name the
# positional parts (db, impl, size) in a copy of the raw output.
sed -E 's#^Benchmark(Find|CreateInBatches)/([a-z0-9]+)/([a-z-]*[a-z])(-[0-9]+)?([[:space:]])#Benchmark\1/db=\2/impl=\3\4\5#' \
	"$out/bench.txt" >"$tmp/bench.txt"
sed -E 's#^Benchmark(Decrypt|Encrypt)/([a-z-]*[a-z])/([0-9A-Za-z]+)(-[0-9]+)?([[:space:]])#Benchmark\1/impl=\2/size=\3\4\5#' \
	"$out/codec.txt" >"$tmp/codec.txt"

stat() { (cd "$here" && go run "$benchstat" "$@"); }

echo
echo "== benchstat: Find and CreateInBatches, each column against plain"
stat -table .name -row /db -col '/impl@(plain raw-tokens envelope-warm envelope-cold bound-warm bound-cold gorm-crypto sqlcrypter per-row)' \
	"$tmp/bench.txt" | tee "$out/bench.stat.txt"

echo
echo "== benchstat: codec, ours against fernet-go"
stat -table .name -row /size -col '/impl@(fernet-go ours)' "$tmp/codec.txt" | tee "$out/codec.stat.txt"

echo
echo "== benchstat: opening a value, bound format against the project's Fernet"
stat -table .name -row /size,/buf -col '/format@(fernet bound-text bound-raw)' "$out/bound.txt" | tee "$out/bound.stat.txt"

echo "# load average at end: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/machine.txt"

echo
echo "== targets (medians)"
(cd "$here" && go run ./targets "$out/bench.txt" "$out/codec.txt" "$out/bound.txt") | tee "$out/targets.txt"
