#!/usr/bin/env bash
# Runs every cargo-fuzz target briefly, as CI does: first replays the
# committed seed corpus (fails on any crash), then fuzzes for a short time
# with a scratch corpus so the committed seeds stay small.
#
#   fuzz/ci.sh [SECONDS_PER_TARGET]   (default 30)
#
# Needs the nightly toolchain and cargo-fuzz (installed here if missing).
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-30}"

if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

for target in $(cargo +nightly fuzz list); do
    mkdir -p "corpus/$target" "corpus-scratch/$target"
    echo "== $target: replay seed corpus"
    cargo +nightly fuzz run "$target" "corpus/$target" -- -runs=0
    echo "== $target: fuzz for ${secs}s"
    cargo +nightly fuzz run "$target" "corpus-scratch/$target" "corpus/$target" -- \
        -max_total_time="$secs" -print_final_stats=1
done
