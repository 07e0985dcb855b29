#!/usr/bin/env bash
# Builds the fuzz targets with the STABLE toolchain and runs each for N seconds
# (default 30). Targets: codec (packets), mqttsn (the MQTT-SN codec and gateway) and
# storage_records (the store's record encodings); FUZZ_TARGETS="codec" runs a subset.
#
# How it works without nightly: libfuzzer-sys compiles libFuzzer (C++) and provides `main`;
# rustc's LLVM adds the sanitizer-coverage instrumentation libFuzzer needs through plain
# `-C` flags, and `--cfg fuzzing` selects libfuzzer-sys' fuzzing entry point. No sanitizer
# (ASan) runs: Rust's memory safety plus `#![forbid(unsafe_code)]` in the codec cover that;
# debug assertions and overflow checks are on (see Cargo.toml).
#
# Environment: FUZZ_TARGETS (default "codec mqttsn storage_records"), FUZZ_JOBS (default 1)
# parallel fuzzing processes; extra arguments after the seconds go to libFuzzer.
set -euo pipefail

secs="${1:-30}"
shift || true
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here"

# libFuzzer is C++: install a compiler when the machine has none.
if ! command -v c++ >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq g++ >/dev/null
    else
        echo "run.sh: a C++ compiler is required" >&2
        exit 1
    fi
fi

host="$(rustc -vV | sed -n 's/^host: //p')"
# Its own target dir: the instrumentation flags must not mix with the workspace build.
export CARGO_TARGET_DIR="$here/target"
# `--target` keeps these flags off build scripts and proc macros.
export RUSTFLAGS="-Cpasses=sancov-module \
 -Cllvm-args=-sanitizer-coverage-level=4 \
 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
 -Cllvm-args=-sanitizer-coverage-pc-table \
 -Cllvm-args=-sanitizer-coverage-trace-compares \
 --cfg fuzzing -Cdebug-assertions -Coverflow-checks"

targets="${FUZZ_TARGETS:-codec mqttsn storage_records}"
for target in $targets; do
    cargo build --release --target "$host" --bin "$target"
done

jobs=()
if [ "${FUZZ_JOBS:-1}" -gt 1 ]; then jobs=(-jobs="$FUZZ_JOBS" -workers="$FUZZ_JOBS"); fi

for target in $targets; do
    corpus="$here/corpus/$target"       # grows while fuzzing; not checked in
    artifacts="$here/artifacts/$target" # crashes land here
    seeds="$here/seeds"                 # the codec's seeds; other targets have seeds-<target>
    if [ "$target" != codec ]; then seeds="$here/seeds-$target"; fi
    mkdir -p "$corpus" "$artifacts"
    echo "== fuzzing $target for ${secs}s"
    "$CARGO_TARGET_DIR/$host/release/$target" "$corpus" "$seeds" \
        -max_total_time="$secs" \
        -max_len=4096 \
        -timeout=10 \
        -rss_limit_mb=2048 \
        -print_final_stats=1 \
        -artifact_prefix="$artifacts/" \
        "${jobs[@]}" "$@"
done
