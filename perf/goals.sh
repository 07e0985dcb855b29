#!/usr/bin/env bash
# RingMQ against the throughput bar of its design goals: the seven closed-loop scenarios in
# which FlashMQ was measured on this project's 2-core machine (MQTT 3.1.1, 64 B payloads,
# window 256 undelivered messages per publisher for QoS 0 and 64 for QoS 1, 3 s runs after a
# 1 s warm-up, median of 3). Each scenario runs 3 times against a fresh RingMQ at its default
# shard count; the median run (by throughput) is reported with its p99 and loss counts.
# FlashMQ cannot be installed here (not in Debian); its figures are the ones recorded in the
# project's design notes, measured earlier on this machine, and are quoted, not re-measured.
#
#   perf/goals.sh [--out FILE]        (default: print the Markdown table to stdout)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=/dev/stdout
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "goals.sh: unknown argument '$1' (see --help)" >&2; exit 1 ;;
    esac
    shift
done
for tool in jq bc; do
    command -v $tool >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $tool >/dev/null; }
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release -q -p ringmq -p ringmq-perf)
BENCH=$CARGO_TARGET_DIR/release/ringmq-bench
RINGMQ=$CARGO_TARGET_DIR/release/ringmq
PORT=18849
WORK=$(mktemp -d /tmp/ringmq-goals.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; }
trap cleanup EXIT

# id|scenario|args|FlashMQ best (1 or 2 threads, msgs/s)|FlashMQ p99 (ms, where recorded)
ROWS=("p4q0|4 pairs, QoS 0|pairs --pairs 4 --qos 0|2600000|0.9"
      "fi8q0|8 -> 1 fan-in, QoS 0|fan-in --publishers 8 --subscribers 1 --qos 0|2340000|-"
      "fo8q0|1 -> 8 fan-out, QoS 0 (deliveries)|fan-out --publishers 1 --subscribers 8 --qos 0|4530000|-"
      "fo64q0|1 -> 64 fan-out, QoS 0 (deliveries)|fan-out --publishers 1 --subscribers 64 --qos 0|4950000|-"
      "p64q0|64 pairs, QoS 0|pairs --pairs 64 --qos 0|2560000|-"
      "p4q1|4 pairs, QoS 1|pairs --pairs 4 --qos 1|663000|-"
      "fi8q1|8 -> 1 fan-in, QoS 1|fan-in --publishers 8 --subscribers 1 --qos 1|876000|-")

{
    echo "| scenario | FlashMQ best | RingMQ median of 3 | ratio | RingMQ p50 / p99 (ms) | lost (QoS 1) | the 3 runs (msgs/s) |"
    echo "|---|---|---|---|---|---|---|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r id title args bar _ <<<"$row"
        "$RINGMQ" --listen "127.0.0.1:$PORT" >"$WORK/ringmq.log" 2>&1 &
        PID=$!
        sleep 0.5
        runs=()
        for i in 1 2 3; do
            # shellcheck disable=SC2086
            "$BENCH" $args --port "$PORT" --payload 64 --duration 3s --warmup 1s --drain 3s \
                --json --quiet >"$WORK/$id-$i.json" 2>/dev/null || true
            runs+=("$(jq -r '.received_per_s // 0' "$WORK/$id-$i.json") $i")
        done
        kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
        median=$(printf '%s\n' "${runs[@]}" | sort -n | sed -n 2p | cut -d' ' -f2)
        f="$WORK/$id-$median.json"
        rate=$(jq -r '.received_per_s' "$f")
        p50=$(jq -r '.latency_p50_us / 1000' "$f")
        p99=$(jq -r '.latency_p99_us / 1000' "$f")
        lost=$(jq -r '.lost' "$f")
        all=$(printf '%s\n' "${runs[@]}" | cut -d' ' -f1 | awk '{printf "%s%.2fM", sep, $1/1e6; sep=", "}')
        printf "| %s | %.2fM | %.2fM | %.2f | %.2f / %.2f | %s | %s |\n" "$title" \
            "$(echo "$bar / 1000000" | bc -l)" "$(echo "$rate / 1000000" | bc -l)" \
            "$(echo "$rate / $bar" | bc -l)" "$p50" "$p99" "$lost" "$all"
    done
} >"$OUT"
