#!/usr/bin/env bash
# Runs every fuzz target of the module in turn, each for FUZZTIME (default
# 50000x, that is 50,000 executions; a few seconds per target on a 2-core
# machine).
#
# The limit is a count and not a duration on purpose: with a duration, Go up
# to 1.26 can end a clean fuzzing run with a bare "context deadline exceeded"
# failure and no failing input, a race in its fuzzing coordinator when the
# deadline fires (https://go.dev/issue/75804, fixed in Go 1.27). A count-based
# limit never sets that deadline. A duration still works (FUZZTIME=30s) for
# longer runs by hand.
#
# Every target runs even when an earlier one fails; a failure prints the
# fuzzer's output, which names the failing input saved under
# <package>/testdata/fuzz/<target>/, and the script exits 1 at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${FUZZTIME:-50000x}"

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
failed=()
for dir in $(git ls-files '*_test.go' | xargs grep -l '^func Fuzz' | xargs -n1 dirname | sort -u); do
	for target in $(grep -h '^func Fuzz' "$dir"/*_test.go | sed -E 's/^func (Fuzz[A-Za-z0-9_]*).*/\1/'); do
		start=$SECONDS
		if go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "./$dir" >"$log" 2>&1; then
			echo "-- ok    ./$dir $target ($((SECONDS - start))s)"
			continue
		fi
		echo "-- FAIL  ./$dir $target ($((SECONDS - start))s); the fuzzer's output:"
		grep -v '^fuzz: elapsed' "$log" | sed 's/^/   /'
		for input in $(sed -nE 's/.*Failing input written to (testdata\/fuzz\/[^ ]+).*/\1/p' "$log"); do
			echo "   $dir/$input:"
			sed 's/^/     /' "$dir/$input" || true
		done
		failed+=("./$dir $target")
	done
done
if ((${#failed[@]} > 0)); then
	printf 'fuzz: %d target(s) failed:\n' "${#failed[@]}"
	printf '  %s\n' "${failed[@]}"
	exit 1
fi
echo "fuzz: every target ran $fuzztime without a failure"
