#!/bin/sh
# Builds seed inputs for the fuzz targets from real images (see README.md):
# small `lazarus capture --from-file` images of varied files, chunk sizes and
# codecs, an incremental child image, and a `capture --pid` image of the
# `blocked` fixture; then splits them with the `fuzz_seeds` example into
# OUT/image_reader, OUT/image_index and OUT/chunk_frame.
#
#   fuzz/seeds.sh OUT          (run from the repository root)
#
# The seeds are then merged into fuzz/corpus/<target> with `cargo fuzz cmin`.
set -eu

out=${1:?usage: fuzz/seeds.sh OUT}
cargo build -p lazarus -p fixtures
lazarus=$PWD/target/debug/lazarus
blocked=$PWD/target/debug/blocked
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

cap() { # cap NAME MEMFILE [capture options...]
    name=$1 mem=$2
    shift 2
    "$lazarus" capture --from-file "$mem" -o "$name.lzr" --workers 1 "$@" >/dev/null
}

# Deterministic contents: text, an ELF binary, incompressible bytes.
python3 - <<'EOF'
import random
r = random.Random(8)
words = [bytes(r.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(r.randrange(2, 9))) for _ in range(300)]
text = b" ".join(r.choice(words) for _ in range(9000))[:40960]
open("text", "wb").write(text)
open("random", "wb").write(r.randbytes(24576))
# 16 identical pages between varied ones: deduplicated chunks.
page = bytes(range(256)) * 16
open("dedup", "wb").write(page * 8 + text[:8192] + page * 8)
# A sparse memory file: data at 0, 300K and 900K of 1 MiB.
with open("sparse", "wb") as f:
    f.truncate(1 << 20)
    for off in (0, 300 << 10, 900 << 10):
        f.seek(off)
        f.write(text[off % 20000:off % 20000 + 12288])
# 5 MiB of repetitive text: one 4 MiB chunk (the limit) and one of 1 MiB.
open("repeat", "wb").write((b"lazarus restores memory lazily " * 170000)[:5 << 20])
# A parent and a child differing in two pages.
open("base", "wb").write(text[:32768])
child = bytearray(text[:32768])
child[5000:5100] = b"x" * 100
child[20000] ^= 0xff
open("child", "wb").write(bytes(child))
EOF
head -c 196608 /bin/ls >elf

cap text-16k text --chunk-size 16K
cap text-raw-4k text --codec raw --chunk-size 4K
cap elf-64k-l19 elf --chunk-size 64K --level 19
cap elf-8k-fast elf --chunk-size 8K --level -5
cap random-8k random --chunk-size 8K
cap dedup-4k dedup --chunk-size 4K
cap sparse-regions sparse --chunk-size 32K --region 0:64K --region 256K:128K --region 896K:128K
cap repeat-4m repeat --chunk-size 4M
cap base base --chunk-size 8K
cap child child --chunk-size 8K --parent base.lzr

# A live process: the blocked fixture, asleep in clock_nanosleep.
"$blocked" --mode sleep >blocked.out &
pid=$!
i=0
until grep -q READY blocked.out; do
    i=$((i + 1))
    [ $i -lt 100 ] || { echo "blocked fixture did not start" >&2; kill $pid; exit 1; }
    sleep 0.1
done
"$lazarus" capture --pid $pid -o process-blocked.lzr --workers 1 >/dev/null
kill $pid

cd - >/dev/null
cargo run -q -p snapshot-format --example fuzz_seeds -- "$out" "$work"/*.lzr
