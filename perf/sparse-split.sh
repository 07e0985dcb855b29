#!/usr/bin/env bash
# Where a sparse message's broker CPU goes: user space or the kernel. Starts one broker,
# runs `ringmq-bench pairs` at 10 msgs/s per publisher against it, and 8 s into the run reads
# the broker's user and system CPU (/proc/PID/stat) over a 5 s window measured by
# `perf stat -e raw_syscalls:sys_enter,context-switches`; prints each per message delivered.
#
#   perf/sparse-split.sh BROKER [--qos Q] [--pairs N] [--bench PATH]
#
# BROKER: `ringmq1` / `ringmq2` (target/release/ringmq --in-memory with 1 or 2 shards; extra
# broker options in $RINGMQ_ARGS, the binary in $RINGMQ) or `mosquitto` (from PATH).
# Needs `perf` with access to the broker's tracepoints (root or perf_event_paranoid <= -1).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BROKER=${1:?usage: perf/sparse-split.sh ringmq1|ringmq2|mosquitto [--qos Q] [--pairs N]}
shift
QOS=0 PAIRS=4000 BENCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/ringmq-bench
RINGMQ=${RINGMQ:-${CARGO_TARGET_DIR:-$ROOT/target}/release/ringmq}
while [ $# -gt 0 ]; do
    case "$1" in
        --qos) QOS=$2; shift ;;
        --pairs) PAIRS=$2; shift ;;
        --bench) BENCH=$2; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
ulimit -n 20000
PORT=$((29400 + RANDOM % 500))
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
case $BROKER in
    ringmq1|ringmq2)
        # shellcheck disable=SC2086
        "$RINGMQ" --in-memory --shards "${BROKER#ringmq}" --listen "127.0.0.1:$PORT" \
            --log-level warn ${RINGMQ_ARGS:-} >"$WORK/broker.log" 2>&1 &
        ;;
    mosquitto)
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_connections -1\n' "$PORT" >"$WORK/m.conf"
        mosquitto -c "$WORK/m.conf" >"$WORK/broker.log" 2>&1 &
        ;;
    *) echo "unknown broker $BROKER" >&2; exit 2 ;;
esac
PID=$!
sleep 1
ticks() { awk '{print $14, $15}' "/proc/$PID/stat"; }
(
    sleep 8
    before=$(ticks)
    perf stat -e raw_syscalls:sys_enter,context-switches -p "$PID" -- sleep 5 2>"$WORK/perf.txt"
    echo "$before $(ticks)" >"$WORK/ticks.txt"
) &
WINDOW=$!
"$BENCH" pairs --port "$PORT" --pairs "$PAIRS" --rate $((PAIRS * 10)) --qos "$QOS" \
    --duration 15s --pid "$PID" >"$WORK/bench.txt" 2>&1
wait "$WINDOW"
kill "$PID"
wait "$PID" 2>/dev/null || true
read -r u0 s0 u1 s1 <"$WORK/ticks.txt"
count() { grep "$1" "$WORK/perf.txt" | awk '{gsub(",", "", $1); print $1}'; }
HZ=$(getconf CLK_TCK)
MSGS=$((PAIRS * 10 * 5))
awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v hz="$HZ" -v m="$MSGS" \
    -v sc="$(count raw_syscalls)" -v cs="$(count context-switches)" -v b="$BROKER" -v q="$QOS" \
    'BEGIN { printf "%s qos %s: user %.2f us, kernel %.2f us, %.2f syscalls, %.3f context switches per message\n",
             b, q, u * 1e6 / hz / m, s * 1e6 / hz / m, sc / m, cs / m }'
grep -E '^(delivered_per_s|received_per_s|broker_cpu_pct|latency_p50_us|latency_p99_us) ' "$WORK/bench.txt" || true
