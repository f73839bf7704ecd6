#!/usr/bin/env bash
# Before and after in one run: the bench/ and internal/token benchmarks of
# two trees, interleaved round by round, so that a busy spell of the machine
# falls on both alike.
#
#   OLD=path/to/old/tree bench/results/relayout-2026-12-01/beforeafter.sh [OUTDIR]
#
# OLD is a checkout of the code to compare with (here 221716e, e.g.
# `git worktree add ../old 221716e`); NEW defaults to this tree.
set -euo pipefail
old=${OLD:?set OLD to the tree to compare with}
new=${NEW:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)}
out=${1:-$(mktemp -d)}
count=${COUNT:-6}
mkdir -p "$out"
(cd "$old/bench" && go test -c -o "$out/old.test" .)
(cd "$new/bench" && go test -c -o "$out/new.test" .)
(cd "$old" && go test -c -o "$out/oldtok.test" ./internal/token/)
(cd "$new" && go test -c -o "$out/newtok.test" ./internal/token/)
: >"$out/old.txt"; : >"$out/new.txt"; : >"$out/oldtok.txt"; : >"$out/newtok.txt"
for r in $(seq "$count"); do
	echo "round $r of $count"
	(cd "$old/bench" && "$out/old.test" -test.run '^$' -test.bench . -test.benchmem -test.count 1 -test.benchtime 10x) >>"$out/old.txt"
	(cd "$new/bench" && "$out/new.test" -test.run '^$' -test.bench . -test.benchmem -test.count 1 -test.benchtime 10x) >>"$out/new.txt"
	(cd "$old/internal/token" && "$out/oldtok.test" -test.run '^$' -test.bench '^Benchmark(Decrypt|Encrypt)$' -test.benchmem -test.count 1) >>"$out/oldtok.txt"
	(cd "$new/internal/token" && "$out/newtok.test" -test.run '^$' -test.bench '^Benchmark(Decrypt|Encrypt)$' -test.benchmem -test.count 1) >>"$out/newtok.txt"
done
echo "results in $out: benchstat old=old.txt new=new.txt (after naming db= and impl= as bench/run.sh does)"
