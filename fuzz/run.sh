#!/usr/bin/env bash
# Run one keel fuzz target for SECONDS (default 600) and print libFuzzer's
# final stats (execs, corpus, crashes):
#
#   fuzz/run.sh TARGET [SECONDS] [more libFuzzer flags...]
#   fuzz/run.sh all [SECONDS]        # every target, one after another
#
# New inputs go to fuzz/corpus/TARGET (not committed), crashes to
# fuzz/artifacts/TARGET; the committed seeds in fuzz/seeds/TARGET are read
# too. Needs cargo-fuzz (`cargo install cargo-fuzz --locked`). On a stable
# toolchain RUSTC_BOOTSTRAP=1 lets cargo fuzz pass -Zsanitizer=address.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
target=${1:?usage: fuzz/run.sh TARGET|all [SECONDS] [libFuzzer flags...]}
seconds=${2:-600}
shift $(($# < 2 ? $# : 2))
targets=(record segment_recovery index consume_queue config grpc_requests)

if [[ $target == all ]]; then
    for t in "${targets[@]}"; do
        "$0" "$t" "$seconds" "$@"
    done
    exit 0
fi

export RUSTC_BOOTSTRAP=1
case $target in
    # The store's flusher and preparer threads and tokio's worker threads
    # outlive an input by design; LeakSanitizer reports them as leaks.
    segment_recovery | index | grpc_requests) export ASAN_OPTIONS="detect_leaks=0${ASAN_OPTIONS:+:$ASAN_OPTIONS}" ;;
esac
case $target in
    segment_recovery) max_len=65536 ;; # whole store directories
    index) max_len=16384 ;;
    *) max_len=4096 ;;
esac

cd "$root"
mkdir -p "fuzz/corpus/$target" "fuzz/artifacts/$target"
exec cargo fuzz run "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=60 -print_final_stats=1 "$@"
