#!/usr/bin/env bash
# RingMQ and mosquitto over TLS and WebSocket with ringmq-bench, in the same run, on
# loopback: the seven goal scenarios of perf/goals.sh (MQTT 3.1.1, 64 B, closed loop) over
# mqtts:// and ws://, TLS handshakes per second (5,000 connections, 4,000 in flight) with
# the PINGRESP latency of a plain client meanwhile (--probe-port), and the memory of idle
# TLS and WebSocket connections (RSS slope from 2,000 to 10,000 connections, fresh broker per
# point). Certificates: a P-256 CA and server certificate made here with openssl. Each
# messaging cell is the median of --runs runs (by throughput); CPU per message is the
# broker's CPU time over the measured seconds divided by the messages delivered.
#
#   perf/transports.sh [--runs N] [--out FILE] [--only messaging|handshakes|memory]
#                      [--brokers "ringmq mosquitto"] [--keep]   (--keep: leave the JSON in /tmp)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CMDLINE="perf/transports.sh $*"
RUNS=3
OUT=/dev/stdout
ONLY=""
BROKERS="ringmq mosquitto"
KEEP=0
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) RUNS=$2; shift ;;
        --out) OUT=$2; shift ;;
        --only) ONLY=$2; shift ;;
        --brokers) BROKERS=$2; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "transports.sh: unknown argument '$1' (see --help)" >&2; exit 1 ;;
    esac
    shift
done
for tool in jq openssl; do
    command -v $tool >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq $tool >/dev/null; }
done
[ -x /usr/sbin/mosquitto ] || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null; }

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release -q -p ringmq -p ringmq-perf)
BENCH=$CARGO_TARGET_DIR/release/ringmq-bench
RINGMQ=$CARGO_TARGET_DIR/release/ringmq
WORK=$(mktemp -d /tmp/ringmq-transports.XXXXXX)
PID=""
BASE=19100
STARTS=0
log() { echo "transports.sh: $*" >&2; }
stop() { [ -n "$PID" ] && { kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; }; PID=""; }
trap 'stop; [ $KEEP = 1 ] && log "results in $WORK" || rm -rf "$WORK"' EXIT

# P-256 CA and server certificate (localhost, 127.0.0.1).
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" -subj "/CN=transports.sh CA" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$WORK/server.key" -out "$WORK/server.csr" -subj "/CN=localhost" 2>/dev/null
echo "subjectAltName=DNS:localhost,IP:127.0.0.1" >"$WORK/ext.cnf"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/ext.cnf" -out "$WORK/server.pem" 2>/dev/null
# mosquitto started as root drops to its own user, which must read the (throwaway) key.
chmod 755 "$WORK" && chmod 644 "$WORK"/*

# start BROKER: listeners plain $P, mqtts $((P+1)), ws $((P+2)), wss $((P+3)); a new port
# block per start (TIME_WAIT sockets of the last run stay behind on the old ports).
start() {
    stop
    P=$((BASE + 10 * STARTS))
    STARTS=$((STARTS + 1))
    case "$1" in
        ringmq)
            cat >"$WORK/ringmq.toml" <<EOF
listen = ["127.0.0.1:$P"]
[[listeners]]
url = "mqtts://127.0.0.1:$((P + 1))"
cert = "$WORK/server.pem"
key = "$WORK/server.key"
[[listeners]]
url = "ws://127.0.0.1:$((P + 2))/mqtt"
[[listeners]]
url = "wss://127.0.0.1:$((P + 3))/mqtt"
cert = "$WORK/server.pem"
key = "$WORK/server.key"
[limits]
max_inflight = 128
EOF
            "$RINGMQ" --config "$WORK/ringmq.toml" --in-memory >"$WORK/ringmq.log" 2>&1 &
            ;;
        mosquitto)
            # mosquitto 2.0's WebSocket listeners (libwebsockets) bind every interface.
            cat >"$WORK/mosquitto.conf" <<EOF
per_listener_settings false
allow_anonymous true
persistence false
max_connections -1
max_queued_messages 1000000
max_inflight_messages 128
set_tcp_nodelay true
log_dest none
listener $P 127.0.0.1
listener $((P + 1)) 127.0.0.1
certfile $WORK/server.pem
keyfile $WORK/server.key
listener $((P + 2))
protocol websockets
listener $((P + 3))
protocol websockets
certfile $WORK/server.pem
keyfile $WORK/server.key
EOF
            /usr/sbin/mosquitto -c "$WORK/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
            ;;
    esac
    PID=$!
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$((P + 3))") 2>/dev/null && return 0
        sleep 0.05
    done
    log "$1 did not start"; cat "$WORK/$1.log" >&2; return 1
}

# transport flags and port for T in tcp tls ws wss
tflags() {
    case "$1" in
        tcp) echo "--port $P" ;;
        tls) echo "--port $((P + 1)) --tls --cafile $WORK/ca.pem" ;;
        ws) echo "--port $((P + 2)) --ws" ;;
        wss) echo "--port $((P + 3)) --tls --ws --cafile $WORK/ca.pem" ;;
    esac
}

bench() { # FILE ARGS...: one run's JSON in FILE ({"failed":true} when none)
    local f=$1; shift
    # shellcheck disable=SC2068
    if ! timeout 180 "$BENCH" $@ --pid "$PID" --json --quiet >"$f" 2>"$f.err"; then
        jq -e . "$f" >/dev/null 2>&1 || { log "failed: $* ($(tail -1 "$f.err"))"; echo '{"failed": true}' >"$f"; }
    fi
}

ROWS=("p4q0|4 pairs, QoS 0|pairs --pairs 4 --qos 0"
      "fi8q0|8 -> 1 fan-in, QoS 0|fan-in --publishers 8 --subscribers 1 --qos 0"
      "fo8q0|1 -> 8 fan-out, QoS 0|fan-out --publishers 1 --subscribers 8 --qos 0"
      "fo64q0|1 -> 64 fan-out, QoS 0|fan-out --publishers 1 --subscribers 64 --qos 0"
      "p64q0|64 pairs, QoS 0|pairs --pairs 64 --qos 0"
      "p4q1|4 pairs, QoS 1|pairs --pairs 4 --qos 1"
      "fi8q1|8 -> 1 fan-in, QoS 1|fan-in --publishers 8 --subscribers 1 --qos 1")

# cell FILE...: "rate (µs CPU/msg)" of the median run by throughput
cell() {
    local best
    best=$(for f in "$@"; do echo "$(jq -r '.received_per_s // 0' "$f") $f"; done | sort -n | awk -v n=$# 'NR==int((n+1)/2){print $2}')
    jq -r '
        if .failed then "failed" else
        ((.received_per_s / 1e6 * 100 | round) / 100 | tostring) + "M (" +
        (if .broker_cpu_pct then ((.broker_cpu_pct / 100 / .received_per_s * 1e6 * 100 | round) / 100 | tostring) else "-" end)
        + " µs)" + (if .lost > 0 then " lost " + (.lost|tostring) else "" end) end' "$best"
}

messaging() {
    for broker in $BROKERS; do
        start $broker
        for t in tls ws; do
            for row in "${ROWS[@]}"; do
                IFS='|' read -r id _ args <<<"$row"
                for i in $(seq 1 "$RUNS"); do
                    log "$broker $t $id run $i"
                    # shellcheck disable=SC2046
                    bench "$WORK/$broker-$t-$id-$i.json" $args --payload 64 --duration 3s --warmup 1s --drain 3s $(tflags $t)
                done
            done
        done
        stop
    done
    echo "### Throughput over TLS and WebSocket (msgs/s delivered; broker CPU per message)"
    echo
    echo "| scenario | RingMQ TLS | mosquitto TLS | RingMQ WebSocket | mosquitto WebSocket |"
    echo "|---|---|---|---|---|"
    for row in "${ROWS[@]}"; do
        IFS='|' read -r id title _ <<<"$row"
        line="| $title"
        for t in tls ws; do
            for broker in ringmq mosquitto; do
                [[ " $BROKERS " == *" $broker "* ]] || { line="$line | -"; continue; }
                files=()
                for i in $(seq 1 "$RUNS"); do files+=("$WORK/$broker-$t-$id-$i.json"); done
                line="$line | $(cell "${files[@]}")"
            done
        done
        echo "$line |"
    done
    echo
}

handshakes() {
    echo "### Handshakes (5,000 connections, 4,000 in flight; a plain client pings every 5 ms meanwhile)"
    echo
    echo "| broker | transport | connections/s | broker CPU | CONNACK p99 | probe PINGRESP p50 / p99 / max |"
    echo "|---|---|---|---|---|---|"
    for broker in $BROKERS; do
        for t in tcp tls wss; do
            start $broker
            f="$WORK/hs-$broker-$t.json"
            # shellcheck disable=SC2046
            bench "$f" connect-rate --connections 5000 --concurrency 4000 --probe-port "$P" $(tflags $t)
            jq -r --arg b "$broker" --arg t "$t" '
                if .failed then "| \($b) | \($t) | failed | | | |" else
                "| \($b) | \($t) | \(.connects_per_s | round) | \(.broker_cpu_pct | round)% | \(.connack_p99_us / 1000 | round) ms | \(.probe_pingresp_p50_us / 1000 * 10 | round / 10) / \(.probe_pingresp_p99_us / 1000 * 10 | round / 10) / \(.probe_pingresp_max_us / 1000 * 10 | round / 10) ms |" end' "$f"
        done
    done
    stop
    echo
}

memory() {
    echo "### Idle connections (broker RSS; fresh broker per point)"
    echo
    echo "| broker | transport | RSS at 2,000 | RSS at 10,000 | slope 2k -> 10k per connection |"
    echo "|---|---|---|---|---|"
    for broker in $BROKERS; do
        for t in tcp tls ws wss; do
            for n in 2000 10000; do
                start $broker
                sleep 0.5
                # shellcheck disable=SC2046
                bench "$WORK/mem-$broker-$t-$n.json" idle --connections $n --hold 3s $(tflags $t)
            done
            a="$WORK/mem-$broker-$t-2000.json"; b="$WORK/mem-$broker-$t-10000.json"
            jq -rs --arg br "$broker" --arg t "$t" '
                if (.[0].broker_rss_after_bytes and .[1].broker_rss_after_bytes and .[0].connected == 2000 and .[1].connected == 10000) then
                "| \($br) | \($t) | \(.[0].broker_rss_after_bytes / 1e6 * 100 | round / 100) MB | \(.[1].broker_rss_after_bytes / 1e6 * 100 | round / 100) MB | \((.[1].broker_rss_after_bytes - .[0].broker_rss_after_bytes) / 8000 | round) B |"
                else "| \($br) | \($t) | failed (\(.[0].connected // "-") / \(.[1].connected // "-") connected) | | |" end' "$a" "$b"
        done
    done
    stop
    echo
}

{
    echo "Command: \`$CMDLINE\`; $(date -u +%Y-%m-%d), $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), load average before: $(cut -d' ' -f1-3 /proc/loadavg); ringmq $(cd "$ROOT" && git rev-parse --short HEAD), mosquitto $(/usr/sbin/mosquitto -h 2>/dev/null | head -1 | awk '{print $3}')"
    echo
    case "$ONLY" in
        messaging) messaging ;;
        handshakes) handshakes ;;
        memory) memory ;;
        "") messaging; handshakes; memory ;;
        *) log "--only: messaging, handshakes or memory"; exit 1 ;;
    esac
} >"$OUT"
