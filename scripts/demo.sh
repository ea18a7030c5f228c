#!/usr/bin/env bash
# The main job, end to end: build Lazarus, start a demo process, capture it,
# kill it, restore it lazily, and check that it goes on exactly where it was.
#
# The demo process is the `counter` fixture: a buffer of DEMO_MIB MiB (default
# 256) filled with a known pattern, rewritten a little every tick and verified
# by the process itself (it prints CORRUPT and exits 3 on any wrong byte), with
# a checksum after tick n that depends only on n. The restored process must
# print the same tick numbers and checksums an uninterrupted run would, and end
# with DONE.
#
# Needs root (ptrace, clone3 with set_tid, userfaultfd). Usage:
#   ./scripts/demo.sh            # DEMO_MIB=1024 ./scripts/demo.sh for 1 GiB
set -euo pipefail
cd "$(dirname "$0")/.."

mib=${DEMO_MIB:-256}
ticks=40          # the demo process ends after this many ticks
capture_at=10     # captured once it has printed this tick
interval_ms=100

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf '\ndemo FAILED: %s\n' "$*" >&2; exit 1; }

if [ "$(id -u)" -ne 0 ]; then
    fail "run as root (capture and restore use ptrace, clone3 set_tid and userfaultfd)"
fi

say "building (release)"
cargo build --release --locked -p lazarus -p fixtures
bin=target/release

work=$(mktemp -d /tmp/lazarus-demo.XXXXXX)
pid=""
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
log=$work/counter.log
img=$work/counter.lzr

# Waits (up to $2 seconds) until the log holds a line matching $1.
wait_for() {
    local pattern=$1 limit=$(($2 * 10))
    for _ in $(seq "$limit"); do
        grep -q -- "$pattern" "$log" && return 0
        sleep 0.1
    done
    fail "no line matching '$pattern' in $log after $2 s"
}

say "starting the demo process: counter, $mib MiB, $ticks ticks"
# Started with only stdin, stdout and stderr: descriptors this shell inherited
# (a CI runner's pipes, say) would be refused by restore, which reopens every
# fd and cannot reopen a pipe (see docs/RESTORE.md, --unrestorable-fds).
(
    for fd in /proc/$BASHPID/fd/*; do
        fd=${fd##*/}
        if [ "$fd" -gt 2 ]; then eval "exec $fd>&-"; fi
    done
    exec setsid "$bin/counter" --mib "$mib" --interval-ms "$interval_ms" --ticks "$ticks"
) </dev/null >"$log" 2>&1 &
pid=$!
wait_for "^READY" 60
wait_for "^TICK n=$capture_at " 60
tail -n 2 "$log"

say "lazarus capture --pid $pid --kill"
"$bin/lazarus" capture --pid "$pid" -o "$img" --kill
wait "$pid" 2>/dev/null || true
kill -0 "$pid" 2>/dev/null && fail "the captured process is still running"
last=$(grep -c '^TICK' "$log")
echo "the process is gone after tick $last"

say "lazarus inspect"
"$bin/lazarus" inspect "$img" | head -n 12

say "lazarus restore (lazy: memory is served on first touch and prefetched)"
"$bin/lazarus" restore "$img" --stdout "$log" --stderr "$log"

say "waiting for the restored process to finish its ticks"
wait_for "^DONE\|^CORRUPT" $((ticks * interval_ms / 1000 + 60))
while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
tail -n 3 "$log"

grep -q '^CORRUPT' "$log" && fail "the restored process found corrupt memory"
# Tick numbers continue without a gap or a repeat, 1..ticks.
seq_ok=$(awk '/^TICK/{split($2,a,"="); if (a[2] != ++n) bad=1} END{print (bad || n != '"$ticks"') ? "no" : "yes"}' "$log")
[ "$seq_ok" = yes ] || fail "tick numbers did not continue 1..$ticks"
# Every checksum matches an uninterrupted run's: run one, without capture.
say "reference run without capture, to compare checksums"
"$bin/counter" --mib "$mib" --interval-ms 0 --ticks "$ticks" >"$work/reference.log"
diff <(grep '^TICK' "$log" | sed 's/ pid=[0-9]*//') \
     <(grep '^TICK' "$work/reference.log" | sed 's/ pid=[0-9]*//') >/dev/null \
    || fail "checksums differ from the uninterrupted run"

say "demo OK: restored pid $pid continued from tick $((last + 1)) to $ticks with every checksum identical to an uninterrupted run"
