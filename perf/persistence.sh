#!/usr/bin/env bash
# QoS 1 to persistent subscribers: RingMQ with `durability = "sync"` (every acknowledgement
# waits for its commit), RingMQ without a store (`--in-memory`), mosquitto with
# `persistence true` (which writes its database only at intervals and does not wait for the
# disk), and optionally another RingMQ build (--baseline BIN, e.g. one from before the
# store, to show the non-persistent figure is unchanged). One broker at a time, on loopback,
# the same generator build; median of --runs runs per cell. Prints a Markdown table.
#
#   perf/persistence.sh [--runs N] [--duration T] [--baseline BIN] [--shards N]
#
# Columns: received msgs/s, broker CPU (% of one core) and CPU microseconds per message,
# end-to-end latency p50/p99, acknowledgement (PUBACK) latency p50/p99, and for RingMQ
# `sync` the store's commits/s and operations per commit (from its Prometheus endpoint when
# the build has one).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=3
DURATION=3s
BASELINE=""
SHARDS=$(nproc)
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift ;;
        --duration) DURATION=$2; shift ;;
        --baseline) BASELINE=$2; shift ;;
        --shards) SHARDS=$2; shift ;;
        -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
        *) echo "persistence.sh: unknown argument '$1' (see --help)" >&2; exit 1 ;;
    esac
    shift
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export PATH=$PATH:/usr/sbin
BENCH=$CARGO_TARGET_DIR/release/ringmq-bench
RINGMQ=$CARGO_TARGET_DIR/release/ringmq
WORK=$(mktemp -d /tmp/ringmq-persist.XXXXXX)
PORT=19300
METRICS_PORT=19299
BROKER_PID=""
log() { echo "persistence.sh: $*" >&2; }
cleanup() { stop_broker; rm -rf "$WORK"; }
trap cleanup EXIT

command -v jq >/dev/null || { apt-get update -qq && apt-get install -y -qq jq >/dev/null; }
command -v mosquitto >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }
(cd "$ROOT" && cargo build --release -q -p ringmq-perf && cargo build --release -q -p ringmq --bin ringmq)

stop_broker() {
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=""
    fi
}

wait_port() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

start_broker() { # kind
    stop_broker
    PORT=$((PORT + 1))
    rm -rf "$WORK/data" "$WORK/mosq"
    mkdir -p "$WORK/data" "$WORK/mosq"
    case "$1" in
        sync)
            printf '[limits]\nmax_inflight = 128\n' >"$WORK/ringmq.toml"
            if "$RINGMQ" --help 2>&1 | grep -q -- '--metrics'; then
                METRICS=(--metrics "127.0.0.1:$METRICS_PORT")
            else
                METRICS=()
            fi
            "$RINGMQ" --listen "127.0.0.1:$PORT" --shards "$SHARDS" --data-dir "$WORK/data" \
                --config "$WORK/ringmq.toml" "${METRICS[@]}" >"$WORK/broker.log" 2>&1 &
            ;;
        memory)
            "$RINGMQ" --listen "127.0.0.1:$PORT" --shards "$SHARDS" --in-memory >"$WORK/broker.log" 2>&1 &
            ;;
        baseline)
            "$BASELINE" --listen "127.0.0.1:$PORT" --shards "$SHARDS" >"$WORK/broker.log" 2>&1 &
            ;;
        mosquitto)
            cat >"$WORK/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence true
persistence_location $WORK/mosq/
max_connections -1
max_queued_messages 1000000
max_inflight_messages 128
set_tcp_nodelay true
log_dest none
EOF
            mosquitto -c "$WORK/mosquitto.conf" >"$WORK/broker.log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    wait_port || { log "$1 did not start"; cat "$WORK/broker.log" >&2; return 1; }
}

# Sum of a Prometheus counter (all label sets) from the broker's endpoint; empty if none.
counter() {
    curl -s "http://127.0.0.1:$METRICS_PORT/metrics" 2>/dev/null \
        | awk -v n="$1" '$1 == n || index($1, n "{") == 1 { s += $2; f = 1 } END { if (f) printf "%.0f", s }'
}

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)]; else print "-" }'; }

# cell KIND SCENARIO-ARGS...: RUNS runs, one fresh broker each; prints the table row.
cell() {
    local kind=$1 title=$2
    shift 2
    local out="$WORK/$kind-$RANDOM"
    mkdir -p "$out"
    for r in $(seq 1 "$RUNS"); do
        start_broker "$kind"
        local c0 o0
        c0=$(counter ringmq_storage_transactions_total || true)
        o0=$(counter ringmq_storage_ops_total || true)
        local t0=$SECONDS
        timeout 120 "$BENCH" "$@" --qos 1 --persistent --port "$PORT" --pid "$BROKER_PID" \
            --duration "$DURATION" --json --quiet >"$out/$r.json" 2>"$out/$r.err" || true
        local c1 o1 secs=$((SECONDS - t0))
        c1=$(counter ringmq_storage_transactions_total || true)
        o1=$(counter ringmq_storage_ops_total || true)
        if [ -n "$c0" ] && [ -n "$c1" ] && [ "$secs" -gt 0 ]; then
            echo "$(( (c1 - c0) / secs ))" >>"$out/commits"
            [ -n "$o0" ] && [ "$c1" -gt "$c0" ] && echo "$(( (o1 - o0) / (c1 - c0) ))" >>"$out/ops"
        fi
        stop_broker
    done
    local f
    f() { for r in $(seq 1 "$RUNS"); do jq -r ".$1 // \"-\"" "$out/$r.json" 2>/dev/null; done | median; }
    local rate cpu
    rate=$(f received_per_s)
    cpu=$(f broker_cpu_pct)
    local per_msg="-"
    if [ "$rate" != "-" ] && [ "$cpu" != "-" ]; then
        per_msg=$(awk -v c="$cpu" -v r="$rate" 'BEGIN { if (r > 0) printf "%.2f", c * 10000 / r }')
    fi
    local lost
    lost=$(for r in $(seq 1 "$RUNS"); do jq -r '.lost // 0' "$out/$r.json" 2>/dev/null; done | paste -sd+ | bc)
    local commits="-" ops="-"
    [ -s "$out/commits" ] && commits=$(median <"$out/commits")
    [ -s "$out/ops" ] && ops=$(median <"$out/ops")
    printf '| %s | %s | %.0f | %.0f%% | %s | %s / %s | %s / %s | %s | %s | %s |\n' \
        "$title" "$kind" "$rate" "$cpu" "$per_msg" \
        "$(f latency_p50_us)" "$(f latency_p99_us)" \
        "$(f ack_latency_p50_us)" "$(f ack_latency_p99_us)" "$commits" "$ops" "$lost"
}

echo "QoS 1, persistent subscribers, 64 B, $SHARDS shard(s), $DURATION per run, median of $RUNS;"
echo "$(nproc) cores, $(uname -r), commit $(cd "$ROOT" && git rev-parse --short HEAD), $(date -u +%Y-%m-%dT%H:%MZ)"
echo
echo '| scenario | broker | msgs/s | broker CPU | CPU us/msg | latency p50 / p99 us | PUBACK p50 / p99 us | commits/s | ops/commit | lost |'
echo '|---|---|---|---|---|---|---|---|---|---|'
KINDS=(sync memory mosquitto)
[ -n "$BASELINE" ] && KINDS+=(baseline)
for scenario in "pairs, 4 pairs|pairs --pairs 4" "fan-in 8 -> 1|fan-in --publishers 8 --subscribers 1"; do
    title=${scenario%%|*}
    args=${scenario#*|}
    for kind in "${KINDS[@]}"; do
        # shellcheck disable=SC2086
        cell "$kind" "$title" $args
    done
done
