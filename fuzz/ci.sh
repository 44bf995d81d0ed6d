#!/usr/bin/env bash
# Runs every cargo-fuzz target briefly on the committed corpus, as CI does.
# Any crash, panic, failed assertion, timeout or out-of-memory fails the
# script (libFuzzer exits non-zero and leaves the input in
# fuzz/artifacts/<target>/).
#
#   fuzz/ci.sh [SECONDS_PER_TARGET]   (default 25)
#
# Works on the STABLE toolchain: `--sanitizer none` needs no -Z flag
# (cargo-fuzz then only passes stable -C options: sancov instrumentation,
# debug assertions, overflow checks). Our code forbids `unsafe`, so
# AddressSanitizer would mostly watch the C parts of dependencies; set
# FUZZ_SANITIZER=address (needs nightly) to use it locally anyway.
#
# Needs cargo-fuzz (scripts/install-deps installs it; outside CI this script
# installs it if missing). New inputs go to a throw-away scratch corpus so
# the committed one stays small.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-25}"
sanitizer="${FUZZ_SANITIZER:-none}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    if [ "${CI:-}" = true ]; then
        echo "fuzz/ci.sh: cargo-fuzz is not installed (scripts/install-deps should have)" >&2
        exit 1
    fi
    cargo install cargo-fuzz --locked
fi

targets=$(cargo fuzz list)
echo "== building $(echo "$targets" | wc -w) fuzz targets (sanitizer: $sanitizer)"
start=$(date +%s)
cargo fuzz build --sanitizer "$sanitizer"
echo "   built in $(( $(date +%s) - start )) s"

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The harnesses' state stores (CA, registry, a whole gateway's data dir).
export MESHGATE_FUZZ_DIR="$scratch/state"
mkdir -p "$MESHGATE_FUZZ_DIR"
passed=0
failed=0
for target in $targets; do
    mkdir -p "corpus/$target" "$scratch/$target"
    echo "== $target: committed corpus ($(ls "corpus/$target" | wc -l) inputs), then ${secs}s of fuzzing"
    # -timeout: one input may take at most 60 s (a hang is a finding);
    # -rss_limit_mb: a leak that grows past 2 GiB is a finding too.
    if cargo fuzz run --sanitizer "$sanitizer" "$target" "$scratch/$target" "corpus/$target" -- \
        -max_total_time="$secs" -timeout=60 -rss_limit_mb=2048 -print_final_stats=1 \
        2>"$scratch/$target.log"; then
        grep -E '^(Done|stat::number_of_executed_units|stat::average_exec_per_sec)' "$scratch/$target.log" || true
        passed=$((passed + 1))
    else
        # Show the finding: the panic message, the backtrace and the input.
        tail -n 60 "$scratch/$target.log"
        echo "!! $target FAILED; reproduce with: cargo fuzz run --sanitizer $sanitizer $target fuzz/artifacts/$target/<file>"
        failed=$((failed + 1))
    fi
done
echo "fuzz: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
