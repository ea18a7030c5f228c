#!/bin/sh
# Runs fuzz targets concurrently with AddressSanitizer, each for SECONDS
# (default 1800), at the lowest CPU priority, logs in fuzz/logs/<target>.log.
# New inputs go to fuzz/work/<target> (not committed); the committed corpus
# fuzz/corpus/<target> is read as seeds. Crashes land in fuzz/artifacts/<target>/.
#
#   fuzz/run-all.sh [SECONDS [TARGET...]]     (from the repository root)
#
# Afterwards, fold what was found back into the committed corpus:
#   cd fuzz && cargo fuzz cmin <target> corpus/<target>   (after copying work/<target> in)
set -eu
cd "$(dirname "$0")"
secs=${1:-1800}
[ $# -gt 0 ] && shift
targets=${*:-$(cargo fuzz list)}
export RUSTC_BOOTSTRAP=1
cargo fuzz build
mkdir -p logs
for t in $targets; do
    mkdir -p "work/$t"
    nice -n 19 cargo fuzz run "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=60 \
        -rss_limit_mb=2048 -malloc_limit_mb=256 \
        -print_final_stats=1 >"logs/$t.log" 2>&1 &
done
wait
grep -H -E "^stat::number_of_executed_units|^Done|ERROR|panicked" logs/*.log || true
