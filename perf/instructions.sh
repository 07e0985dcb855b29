#!/usr/bin/env bash
# Instructions the broker executes per delivered message, A against B, counted by valgrind
# (callgrind): unlike throughput on a shared machine, the count hardly depends on what else
# runs. Each side runs every scenario twice, closed loop as in perf/goals.sh (the broker,
# slowed down some 50x by valgrind, is the bottleneck, so it works in full batches as it
# does at full speed), once for SHORT and once for LONG seconds; the difference of the two
# runs' instruction totals over the difference of their deliveries is the cost of one
# delivery (start-up, shutdown and the one-off work of connecting cancel out). An open-loop
# rate instead would measure mostly the cost of waking up once per message.
#
#   perf/instructions.sh --a "CMD..." --b "CMD..." [--scenarios "id ..."] [--port P]
#
# CMD is a broker command line without --listen; run it on the epoll driver (valgrind does
# not know io_uring), e.g. "target/release/ringmq --in-memory --epoll --no-pin --shards 2".
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
A="" B="" PORT=28849 SHORT=2 LONG=6
BENCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/ringmq-bench
SCENARIOS="p4q0 fi8q0 fo8q0 fo64q0 p64q0 p4q1 fi8q1"
while [ $# -gt 0 ]; do
    case "$1" in
        --a) A=$2; shift ;;
        --b) B=$2; shift ;;
        --scenarios) SCENARIOS=$2; shift ;;
        --port) PORT=$2; shift ;;
        --bench) BENCH=$2; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "instructions.sh: unknown argument '$1'" >&2; exit 1 ;;
    esac
    shift
done
[ -n "$A" ] && [ -n "$B" ] || { echo "instructions.sh: --a and --b are required" >&2; exit 1; }
WORK=$(mktemp -d /tmp/ringmq-instr.XXXXXX)
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true' EXIT

args_of() {
    case "$1" in
        p4q0) echo "pairs --pairs 4 --qos 0" ;;
        fi8q0) echo "fan-in --publishers 8 --subscribers 1 --qos 0" ;;
        fo8q0) echo "fan-out --publishers 1 --subscribers 8 --qos 0" ;;
        fo64q0) echo "fan-out --publishers 1 --subscribers 64 --qos 0" ;;
        p64q0) echo "pairs --pairs 64 --qos 0" ;;
        p4q1) echo "pairs --pairs 4 --qos 1" ;;
        fi8q1) echo "fan-in --publishers 8 --subscribers 1 --qos 1" ;;
        *) echo "instructions.sh: unknown scenario $1" >&2; exit 1 ;;
    esac
}

# measure SIDE ID SECONDS: prints "deliveries instructions".
measure() {
    local side=$1 id=$2 secs=$3 cmd out
    [ "$side" = A ] && cmd=$A || cmd=$B
    out=$WORK/$side-$id-$secs
    # shellcheck disable=SC2086
    valgrind --tool=callgrind --callgrind-out-file="$out.cg" $cmd --listen "127.0.0.1:$PORT" \
        >"$out.log" 2>&1 &
    PID=$!
    for _ in $(seq 1 600); do
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
    # shellcheck disable=SC2046
    "$BENCH" $(args_of "$id") --port "$PORT" --payload 64 --duration "${secs}s" --warmup 1s \
        --drain 5s --json --quiet >"$out.json" 2>/dev/null || true
    kill -TERM "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    # Deliveries the subscribers received in the whole run (warm-up included): what the
    # broker did the work for (QoS 0 may lose some under valgrind's slowness).
    echo "$(jq -r '.expected_deliveries - .lost' "$out.json") $(awk '/^totals:/ { print $2 }' "$out.cg")"
}

echo "| scenario | A instructions per delivery | B instructions per delivery | B/A |"
echo "|---|---|---|---|"
for id in $SCENARIOS; do
    per=()
    for side in A B; do
        read -r d1 i1 <<<"$(measure "$side" "$id" "$SHORT")"
        read -r d2 i2 <<<"$(measure "$side" "$id" "$LONG")"
        per+=("$(echo "($i2 - $i1) / ($d2 - $d1)" | bc -l)")
    done
    printf "| %s | %.0f | %.0f | %.3f |\n" "$(args_of "$id")" "${per[0]}" "${per[1]}" \
        "$(echo "${per[1]} / ${per[0]}" | bc -l)"
done
