#!/usr/bin/env bash
# Side-by-side comparison of RingMQ and mosquitto with ringmq-bench, one broker at a time, on
# loopback, same scenario matrix, same generator build. Writes perf/RESULTS.md.
#
#   perf/compare.sh [--quick] [--out FILE] [--threads N]
#
# --quick: shorter runs and fewer scenarios (a fast check, not numbers to quote).
# A broker whose binary is missing (or fails to build) is skipped with a message.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CMDLINE="perf/compare.sh $*"
QUICK=0
OUT="$ROOT/perf/RESULTS.md"
THREADS=$(nproc)
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --out) OUT=$2; shift ;;
        --threads) THREADS=$2; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "compare.sh: unknown argument '$1' (see --help)" >&2; exit 1 ;;
    esac
    shift
done

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BENCH=$CARGO_TARGET_DIR/release/ringmq-bench
RINGMQ=$CARGO_TARGET_DIR/release/ringmq
BASE_PORT=18839
PORT=$BASE_PORT
STARTS=0
# Outbound inflight window per client, the same for both: RingMQ's default (limits.max_inflight,
# given explicitly below too); mosquitto gets it through max_inflight_messages.
INFLIGHT=128
WORK=$(mktemp -d /tmp/ringmq-compare.XXXXXX)
BROKER_PID=""

log() { echo "compare.sh: $*" >&2; }

cleanup() {
    stop_broker
    rm -rf "$WORK"
}
trap cleanup EXIT

need_tools() {
    local missing=()
    command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
    command -v jq >/dev/null || missing+=(jq)
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]} from the distribution's packages"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    export PATH=$PATH:/usr/sbin
}

build() {
    log "building ringmq-bench (release)"
    (cd "$ROOT" && cargo build --release -q -p ringmq-perf)
    log "building ringmq (release)"
    if ! (cd "$ROOT" && cargo build --release -q -p ringmq --bin ringmq); then
        log "ringmq failed to build; it will be skipped"
    fi
}

wait_port() {
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    return 1
}

start_broker() { # name
    stop_broker
    # A new port for every broker started: connections of earlier runs linger in TIME_WAIT
    # towards the old port, and connecting to the same port again would make each later run
    # pay for the kernel's search around them (measured: 11k instead of 27k connects/s).
    PORT=$((BASE_PORT + STARTS))
    STARTS=$((STARTS + 1))
    case "$1" in
        mosquitto)
            cat >"$WORK/mosquitto.conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
max_connections -1
max_queued_messages 1000000
max_inflight_messages $INFLIGHT
set_tcp_nodelay true
log_dest none
EOF
            mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
            ;;
        ringmq)
            printf '[limits]\nmax_inflight = %s\n' "$INFLIGHT" >"$WORK/ringmq.toml"
            "$RINGMQ" --listen "127.0.0.1:$PORT" --config "$WORK/ringmq.toml" >"$WORK/ringmq.log" 2>&1 &
            ;;
    esac
    BROKER_PID=$!
    if ! wait_port; then
        log "$1 did not start listening on 127.0.0.1:$PORT"
        stop_broker
        return 1
    fi
}

stop_broker() {
    if [ -n "$BROKER_PID" ]; then
        kill "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
        BROKER_PID=""
    fi
}

# bench BROKER ID ARGS...: one run, JSON kept as $WORK/BROKER/ID.json ("failed" marker if none).
bench() {
    local broker=$1 id=$2
    shift 2
    mkdir -p "$WORK/$broker"
    local cmd=("$BENCH" "$@" --port "$PORT" --threads "$THREADS" --pid "$BROKER_PID" --json --quiet)
    log "$broker $id: ${*}"
    if ! timeout 120 "${cmd[@]}" >"$WORK/$broker/$id.json" 2>"$WORK/$broker/$id.err"; then
        # Exit 3 (a QoS guarantee broken) still has a report; anything else has none.
        if ! jq -e . "$WORK/$broker/$id.json" >/dev/null 2>&1; then
            log "$broker $id failed: $(tail -1 "$WORK/$broker/$id.err")"
            echo '{"failed": true}' >"$WORK/$broker/$id.json"
        fi
    fi
}

# Scenario matrix: id|title|args
if [ $QUICK = 1 ]; then
    RUN=(--duration 1s --warmup 500ms)
    SCENARIOS=("p4|point-to-point, 4 pairs|pairs --pairs 4"
               "fi8|fan-in 8 -> 1|fan-in --publishers 8 --subscribers 1"
               "fo8|fan-out 1 -> 8|fan-out --publishers 1 --subscribers 8")
    PAYLOADS=(64)
    IDLE=(--connections 2000 --hold 2s)
    CONNS=(--connections 2000 --source-ips 4)
    OPEN_DURATION=2s
else
    RUN=(--duration 3s --warmup 1s)
    SCENARIOS=("p4|point-to-point, 4 pairs|pairs --pairs 4"
               "p64|point-to-point, 64 pairs|pairs --pairs 64"
               "fi8|fan-in 8 -> 1|fan-in --publishers 8 --subscribers 1"
               "fo8|fan-out 1 -> 8|fan-out --publishers 1 --subscribers 8"
               "fo256|fan-out 1 -> 256|fan-out --publishers 1 --subscribers 256"
               "sh8|shared fan-in 8 -> group of 4|shared --publishers 8 --subscribers 4")
    PAYLOADS=(64 1024)
    IDLE=(--connections 15000 --hold 10s)
    # Four source addresses: the connections of the idle run just before linger in
    # TIME_WAIT, and on one address the kernel's search for a free port would set the rate.
    CONNS=(--connections 10000 --source-ips 4)
    OPEN_DURATION=5s
fi

run_broker() { # name [open-loop rate]
    local b=$1
    start_broker "$b" || return 1
    for s in "${SCENARIOS[@]}"; do
        IFS='|' read -r id _ args <<<"$s"
        for qos in 0 1; do
            for size in "${PAYLOADS[@]}"; do
                # shellcheck disable=SC2086
                bench "$b" "$id-q$qos-$size" $args --qos "$qos" --payload "$size" "${RUN[@]}"
            done
        done
    done
    # Fresh brokers for memory (RSS never shrinks after the runs above) and connection rate.
    start_broker "$b" && bench "$b" idle idle "${IDLE[@]}"
    start_broker "$b" && bench "$b" connect connect-rate "${CONNS[@]}"
    if [ -n "${2:-}" ]; then
        start_broker "$b" && bench "$b" open pairs --pairs 4 --rate "$2" --duration "$OPEN_DURATION" --warmup 1s
    fi
    stop_broker
}

# jq helpers over a result file
val() { jq -r "$2 // empty" "$WORK/$1.json" 2>/dev/null || true; }
num() { local v; v=$(val "$1" "$2"); [ -n "$v" ] && printf "%.0f" "$v" || echo "-"; }
ms() { local v; v=$(val "$1" "$2"); [ -n "$v" ] && awk -v u="$v" 'BEGIN{printf "%.2f", u/1000}' || echo "-"; }
ratio() { # a b
    if [[ "$1" =~ ^[0-9.]+$ && "$2" =~ ^[0-9.]+$ ]] && [ "$2" != 0 ]; then
        awk -v a="$1" -v b="$2" 'BEGIN{printf "%.2fx", a/b}'
    else echo "-"; fi
}
note() { # file: verdict and errors that matter
    local f="$WORK/$1.json"
    [ -f "$f" ] || { echo "not run"; return; }
    if [ "$(val "$1" .failed)" = true ]; then echo "failed"; return; fi
    local v e
    v=$(val "$1" .verdict)
    e=$(jq -r '[.closed_by_broker, .io_error, .protocol_error] | add // 0' "$f")
    [ "$v" != ok ] && printf "%s " "$v"
    [ "$e" != 0 ] && printf "%s connection errors " "$e"
    return 0
}

report() {
    local rate=$1
    {
        echo "# RingMQ vs mosquitto"
        echo
        echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "- machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')), kernel $(uname -r)"
        echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD)$(git -C "$ROOT" diff --quiet -- . ':!perf/RESULTS.md' || echo ' (dirty)')"
        echo "- command: \`$CMDLINE\`"
        echo "- brokers: $( (mosquitto -h 2>/dev/null || true) | head -1), ringmq: $RING_STATUS"
        echo "- settings: loopback, no persistence, outbound inflight $INFLIGHT, mosquitto queue 1,000,000 messages and TCP_NODELAY;"
        echo "  generator: $THREADS threads on the same machine, MQTT 3.1.1, closed loop (window 256 for QoS 0, 64 for QoS 1), runs: ${RUN[*]}"
        echo "- throughput = deliveries received per second; latency = end to end, from the payload's send timestamp."
        echo "  In a closed loop latency is mostly window / throughput (Little's law); compare p99 at equal load in the open-loop table."
        echo
        for s in "${SCENARIOS[@]}"; do
            IFS='|' read -r id title args <<<"$s"
            echo "## $title"
            echo
            echo "\`ringmq-bench $args\`"
            echo
            echo "| QoS | payload | mosquitto msgs/s | p50 ms | p99 ms | RingMQ msgs/s | p50 ms | p99 ms | RingMQ / mosquitto | notes |"
            echo "|---|---|---|---|---|---|---|---|---|---|"
            for qos in 0 1; do
                for size in "${PAYLOADS[@]}"; do
                    local k="$id-q$qos-$size" m r
                    m=$(num "mosquitto/$k" .received_per_s); r=$(num "ringmq/$k" .received_per_s)
                    echo "| $qos | $size B | $m | $(ms "mosquitto/$k" .latency_p50_us) | $(ms "mosquitto/$k" .latency_p99_us) | $r | $(ms "ringmq/$k" .latency_p50_us) | $(ms "ringmq/$k" .latency_p99_us) | $(ratio "$r" "$m") | $(note "mosquitto/$k")$(note "ringmq/$k" | sed 's/^not run$//;s/./RingMQ: &/') |"
                done
            done
            echo
        done
        echo "## Idle connections (memory per connection)"
        echo
        echo "\`ringmq-bench idle ${IDLE[*]}\` against a freshly started broker; RSS from /proc/PID/status before connecting and after the hold."
        echo
        echo "| broker | connected | RSS before | RSS after | bytes per connection |"
        echo "|---|---|---|---|---|"
        for b in mosquitto ringmq; do
            echo "| $b | $(num "$b/idle" .connected) | $(num "$b/idle" .broker_rss_before_bytes) | $(num "$b/idle" .broker_rss_after_bytes) | $(num "$b/idle" .broker_bytes_per_connection) |"
        done
        echo
        echo "## Connection rate"
        echo
        echo "\`ringmq-bench connect-rate ${CONNS[*]}\` (32 handshakes in flight), fresh broker."
        echo
        echo "| broker | connects/s | CONNACK p50 ms | p99 ms | listen overflows |"
        echo "|---|---|---|---|---|"
        for b in mosquitto ringmq; do
            echo "| $b | $(num "$b/connect" .connects_per_s) | $(ms "$b/connect" .connack_p50_us) | $(ms "$b/connect" .connack_p99_us) | $(num "$b/connect" .listen_overflows) |"
        done
        echo
        echo "## Latency at equal load (open loop)"
        echo
        echo "\`ringmq-bench pairs --pairs 4 --rate $rate\`: half of mosquitto's 4-pair QoS 0 64 B throughput above; latency from the scheduled send time."
        echo
        echo "| broker | offered/s | received/s | p50 ms | p99 ms | p99.9 ms | max ms | generator send lag p99 ms |"
        echo "|---|---|---|---|---|---|---|---|"
        for b in mosquitto ringmq; do
            echo "| $b | $rate | $(num "$b/open" .received_per_s) | $(ms "$b/open" .latency_p50_us) | $(ms "$b/open" .latency_p99_us) | $(ms "$b/open" .latency_p99_9_us) | $(ms "$b/open" .latency_max_us) | $(ms "$b/open" .send_lag_p99_us) |"
        done
        echo
        echo "## Generator vs broker CPU (is the generator the bottleneck?)"
        echo
        echo "CPU use during the measured window (% of one core) and the generator's own syscalls per"
        echo "message sent or received, 64 B QoS 0 runs. Both share the machine's cores."
        echo
        echo "| scenario | mosquitto CPU | generator CPU | gen. syscalls/msg | RingMQ CPU | generator CPU | gen. syscalls/msg |"
        echo "|---|---|---|---|---|---|---|"
        for s in "${SCENARIOS[@]}"; do
            IFS='|' read -r id title _ <<<"$s"
            local k="$id-q0-64" sm sr
            sm=$(val "mosquitto/$k" .generator_syscalls_per_msg); sr=$(val "ringmq/$k" .generator_syscalls_per_msg)
            echo "| $title | $(num "mosquitto/$k" .broker_cpu_pct) | $(num "mosquitto/$k" .generator_cpu_pct) | ${sm:--} | $(num "ringmq/$k" .broker_cpu_pct) | $(num "ringmq/$k" .generator_cpu_pct) | ${sr:--} |"
        done
        echo
        echo "Raw JSON of every run: \`results/\` next to this file (not committed)."
    } >"$OUT"
    mkdir -p "$(dirname "$OUT")/results"
    cp -r "$WORK/mosquitto" "$(dirname "$OUT")/results/" 2>/dev/null || true
    [ -d "$WORK/ringmq" ] && cp -r "$WORK/ringmq" "$(dirname "$OUT")/results/"
    log "wrote $OUT"
}

need_tools
build
log "mosquitto"
run_broker mosquitto ""
MAX=$(val mosquitto/p4-q0-64 .received_per_s)
RATE=$(awk -v m="${MAX:-0}" 'BEGIN{r=int(m/2/1000)*1000; print (r < 1000 ? 1000 : r)}')
start_broker mosquitto && bench mosquitto open pairs --pairs 4 --rate "$RATE" --duration "$OPEN_DURATION" --warmup 1s
stop_broker
RING_STATUS="target/release/ringmq --listen 127.0.0.1:PORT (a new port per broker start)"
if [ -x "$RINGMQ" ]; then
    log "ringmq"
    if ! run_broker ringmq "$RATE"; then
        RING_STATUS="skipped: $RINGMQ did not start listening"
        log "ringmq could not be started; its columns stay empty"
    fi
else
    RING_STATUS="skipped: $RINGMQ not found"
    log "skipping RingMQ: $RINGMQ not found (build the broker first)"
fi
report "$RATE"
