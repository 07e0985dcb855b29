#!/usr/bin/env bash
# What authentication and the ACL cost a running broker (README "Authentication and ACLs",
# figures): connects/s with passwords off, argon2id (ringmq passwd) and mosquitto's $7$
# (mosquitto_passwd), and messages/s with no ACL against a 1,000-rule ACL, once with every
# subscription covered whole (a publish check per message) and once with the subscribers'
# wildcard covered in part (also a cached read check per delivery). Each cell is the median
# of 3 runs; runs of the configurations alternate, so drift on a shared machine spreads over
# all of them. A fresh broker (release, 2 shards, no store) per run.
#
# Usage: perf/auth.sh [OUT.md]   (needs jq and mosquitto_passwd)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=${1:-/dev/stdout}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
(cd "$ROOT" && cargo build --release -q -p ringmq -p ringmq-perf)
BENCH=$CARGO_TARGET_DIR/release/ringmq-bench
RINGMQ=$CARGO_TARGET_DIR/release/ringmq
PORT=18861
WORK=$(mktemp -d /tmp/ringmq-authbench.XXXXXX)
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

# Password files: the bench user in each format.
echo "bench-pw" | "$RINGMQ" passwd -c --stdin "$WORK/argon2" bench
mosquitto_passwd -c -b "$WORK/pbkdf2" bench bench-pw

# A 1,000-rule ACL: 997 rules of 200 other users, the bench user's 2 and one pattern.
acl() { # $1: the bench user's read rule for the generator's topics
    for u in $(seq 1 200); do
        echo "user u$u"
        for r in $(seq 1 $((u == 200 ? 2 : 5))); do echo "topic readwrite site$u/dev$r/#"; done
    done
    echo "user bench"
    echo "topic write rmqb/#"
    echo "$1"
    echo "pattern readwrite clients/%c/#"
}
acl "topic read rmqb/#" >"$WORK/acl-full"
# In part: a deny inside the fan-in subscriber's `rmqb/TAG/#` makes that subscription
# partial (its deliveries are checked, through the cache); the pairs' exact filters stay whole.
{ acl "topic read rmqb/#"; echo "user bench"; echo "topic deny rmqb/+/never/#"; } >"$WORK/acl-partial"
rules=$(grep -c '^topic\|^pattern' "$WORK/acl-full")

config() { # $1: name, $2: [auth] lines
    printf '[auth]\n%b' "$2" >"$WORK/$1.toml"
}
config none ""
config argon2 "password_file = \"$WORK/argon2\"\n"
config pbkdf2 "password_file = \"$WORK/pbkdf2\"\n"
config aclfull "acl_file = \"$WORK/acl-full\"\n"
config aclpartial "acl_file = \"$WORK/acl-partial\"\n"

# run CONFIG NAME BENCH-ARGS... -> the JSON report in $WORK/NAME.json
run() {
    local cfg=$1 name=$2
    shift 2
    "$RINGMQ" --listen "127.0.0.1:$PORT" --shards 2 --in-memory --config "$WORK/$cfg.toml" \
        >"$WORK/ringmq.log" 2>&1 &
    PID=$!
    sleep 0.5
    "$BENCH" "$@" --port "$PORT" --json --quiet >"$WORK/$name.json" 2>/dev/null || true
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    PORT=$((PORT + 1)) # a fresh port: no TIME_WAIT left by the previous run
}

median() { sort -n | sed -n 2p; }

{
    echo "perf/auth.sh on $(hostname), $(nproc) cores, $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git -C "$ROOT" rev-parse --short HEAD), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo
    echo "| connections | passwords | connects/s (median of 3) | CONNACK p50 / p99 (ms) | the 3 runs |"
    echo "|---|---|---|---|---|"
    for i in 1 2 3; do
        for cfg in none pbkdf2 argon2; do
            creds=()
            [ "$cfg" != none ] && creds=(--username bench --password bench-pw)
            run "$cfg" "cr-$cfg-$i" connect-rate --connections 1000 --source-ips 4 "${creds[@]}"
        done
    done
    for cfg in none pbkdf2 argon2; do
        label=$(case $cfg in none) echo "off";; pbkdf2) echo "\$7\$ PBKDF2-SHA-512, 101 rounds (mosquitto_passwd)";; argon2) echo "argon2id, 7 MiB, t=5 (ringmq passwd)";; esac)
        rates=$(for i in 1 2 3; do jq -r '.connects_per_s // 0' "$WORK/cr-$cfg-$i.json"; done)
        m=$(echo "$rates" | median)
        f=$(for i in 1 2 3; do echo "$(jq -r '.connects_per_s // 0' "$WORK/cr-$cfg-$i.json") $i"; done | sort -n | sed -n 2p | cut -d' ' -f2)
        p50=$(jq -r '(.connack_p50_us // 0) / 1000' "$WORK/cr-$cfg-$f.json")
        p99=$(jq -r '(.connack_p99_us // 0) / 1000' "$WORK/cr-$cfg-$f.json")
        printf "| 1,000 | %s | %.0f | %.2f / %.2f | %s |\n" "$label" "$m" "$p50" "$p99" "$(echo $rates | tr ' ' ',')"
    done
    echo
    echo "| scenario | ACL | msgs/s (median of 3) | p50 / p99 (ms) | the 3 runs |"
    echo "|---|---|---|---|---|"
    SCEN=("4 pairs, QoS 0|pairs --pairs 4 --qos 0"
          "8 -> 1 fan-in, QoS 1|fan-in --publishers 8 --subscribers 1 --qos 1")
    for s in "${SCEN[@]}"; do
        IFS='|' read -r title args <<<"$s"
        for i in 1 2 3; do
            for cfg in none aclfull aclpartial; do
                # shellcheck disable=SC2086
                run "$cfg" "tp-$cfg-$i" $args --payload 64 --duration 3s --warmup 1s --drain 3s \
                    --username bench --password bench-pw
            done
        done
        for cfg in none aclfull aclpartial; do
            label=$(case $cfg in none) echo "none";; aclfull) echo "$rules rules, subscriptions covered whole";; aclpartial) echo "$((rules + 1)) rules, a deny inside the subscribers' filters";; esac)
            rates=$(for i in 1 2 3; do jq -r '.received_per_s // 0' "$WORK/tp-$cfg-$i.json"; done)
            m=$(echo "$rates" | median)
            f=$(for i in 1 2 3; do echo "$(jq -r '.received_per_s // 0' "$WORK/tp-$cfg-$i.json") $i"; done | sort -n | sed -n 2p | cut -d' ' -f2)
            p50=$(jq -r '.latency_p50_us / 1000' "$WORK/tp-$cfg-$f.json")
            p99=$(jq -r '.latency_p99_us / 1000' "$WORK/tp-$cfg-$f.json")
            all=$(echo "$rates" | awk '{printf "%s%.2fM", sep, $1/1e6; sep=", "}')
            printf "| %s | %s | %.2fM | %.2f / %.2f | %s |\n" "$title" "$label" "$(echo "$m / 1000000" | bc -l)" "$p50" "$p99" "$all"
        done
    done
} >"$OUT"
