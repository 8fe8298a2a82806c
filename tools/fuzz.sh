#!/usr/bin/env bash
# Runs every fuzz target in ./fuzz for the given time each (default 3s).
# Go's fuzzer takes one target per run, so the targets are listed first.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime="${1:-3s}"
targets=$(go test -list '^Fuzz' ./fuzz | grep '^Fuzz' || true)
if [ -z "$targets" ]; then
	echo "fuzz: no targets found" >&2
	exit 1
fi
n=0
for t in $targets; do
	echo "fuzz: $t ($fuzztime)"
	go test ./fuzz -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" >/tmp/pc2-fuzz-$$.log 2>&1 || {
		cat /tmp/pc2-fuzz-$$.log
		echo "fuzz: $t FAILED (the failing input is under fuzz/testdata/fuzz/$t/)" >&2
		rm -f /tmp/pc2-fuzz-$$.log
		exit 1
	}
	n=$((n + 1))
done
rm -f /tmp/pc2-fuzz-$$.log
echo "fuzz: $n targets passed"
