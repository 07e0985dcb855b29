#!/usr/bin/env bash
# Interleaved A/B throughput comparison of two broker commands on the goal scenarios of
# perf/goals.sh (MQTT 3.1.1, 64 B, closed loop, 3 s after a 1 s warm-up). Each round runs
# every scenario against A and against B, in the order A B in odd rounds and B A in even
# ones, each against a fresh broker, so that drift on a shared machine hits both alike.
# Prints, per scenario, each side's median over the rounds and the ratio B/A.
#
#   perf/ab.sh --a "CMD..." --b "CMD..." [--rounds N] [--scenarios "id id ..."]
#              [--scrape-b SECONDS] [--bench PATH] [--port P]
#
# CMD is a broker command line without --listen (the script adds one); e.g.
#   perf/ab.sh --a "/tmp/before/ringmq --in-memory" --b "target/release/ringmq --in-memory"
# --scrape-b S: while B runs, GET /metrics from it every S seconds (B must have
#   "--metrics 127.0.0.1:P+1" in its command line); the scrapes' count and the
#   endpoint thread's CPU time are reported.
# --port P: the brokers listen on P (default 28849, away from goals.sh's 18849).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
A="" B="" ROUNDS=5 PORT=28849 SCRAPE_B="" BENCH=${CARGO_TARGET_DIR:-$ROOT/target}/release/ringmq-bench
SCENARIOS="p4q0 fi8q0 fo8q0 fo64q0 p64q0 p4q1 fi8q1"
while [ $# -gt 0 ]; do
    case "$1" in
        --a) A=$2; shift ;;
        --b) B=$2; shift ;;
        --rounds) ROUNDS=$2; shift ;;
        --scenarios) SCENARIOS=$2; shift ;;
        --scrape-b) SCRAPE_B=$2; shift ;;
        --bench) BENCH=$2; shift ;;
        --port) PORT=$2; shift ;;
        -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
        *) echo "ab.sh: unknown argument '$1' (see --help)" >&2; exit 1 ;;
    esac
    shift
done
[ -n "$A" ] && [ -n "$B" ] || { echo "ab.sh: --a and --b are required" >&2; exit 1; }
command -v jq >/dev/null || { echo "ab.sh: needs jq" >&2; exit 1; }

METRICS_URL=http://127.0.0.1:$((PORT + 1))/metrics
WORK=$(mktemp -d /tmp/ringmq-ab.XXXXXX)
PID="" SCRAPER=""
cleanup() {
    [ -n "$SCRAPER" ] && kill "$SCRAPER" 2>/dev/null
    [ -n "$PID" ] && kill "$PID" 2>/dev/null
    wait 2>/dev/null || true
}
trap cleanup EXIT

args_of() {
    case "$1" in
        p4q0) echo "pairs --pairs 4 --qos 0" ;;
        fi8q0) echo "fan-in --publishers 8 --subscribers 1 --qos 0" ;;
        fo8q0) echo "fan-out --publishers 1 --subscribers 8 --qos 0" ;;
        fo64q0) echo "fan-out --publishers 1 --subscribers 64 --qos 0" ;;
        p64q0) echo "pairs --pairs 64 --qos 0" ;;
        p4q1) echo "pairs --pairs 4 --qos 1" ;;
        fi8q1) echo "fan-in --publishers 8 --subscribers 1 --qos 1" ;;
        *) echo "ab.sh: unknown scenario $1" >&2; exit 1 ;;
    esac
}

# CPU ticks (1/100 s) of the broker's metrics thread, 0 if it has none.
metrics_ticks() {
    local t
    for t in /proc/"$1"/task/*; do
        if [ "$(cat "$t/comm" 2>/dev/null)" = "ringmq-metrics" ]; then
            awk '{ print $14 + $15 }' "$t/stat"
            return
        fi
    done
    echo 0
}

# run SIDE SCENARIO ROUND: one bench run against a fresh broker; appends "rate" to a file.
run() {
    local side=$1 id=$2 round=$3 cmd
    [ "$side" = A ] && cmd=$A || cmd=$B
    # shellcheck disable=SC2086
    $cmd --listen "127.0.0.1:$PORT" >"$WORK/broker-$side.log" 2>&1 &
    PID=$!
    sleep 0.5
    local scrapes=0
    if [ "$side" = B ] && [ -n "$SCRAPE_B" ]; then
        (while true; do curl -sf "$METRICS_URL" >/dev/null && echo >>"$WORK/scrapes"; sleep "$SCRAPE_B"; done) &
        SCRAPER=$!
    fi
    # shellcheck disable=SC2046
    "$BENCH" $(args_of "$id") --port "$PORT" --payload 64 --duration 3s --warmup 1s --drain 3s \
        --json --quiet >"$WORK/$side-$id-$round.json" 2>/dev/null || true
    if [ -n "$SCRAPER" ]; then
        kill "$SCRAPER" 2>/dev/null; wait "$SCRAPER" 2>/dev/null || true; SCRAPER=""
        echo "$(metrics_ticks "$PID")" >>"$WORK/metrics-ticks"
    fi
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
    jq -r '.received_per_s // 0' "$WORK/$side-$id-$round.json" >>"$WORK/$side-$id.rates"
}

median() { sort -n "$1" | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

for round in $(seq 1 "$ROUNDS"); do
    for id in $SCENARIOS; do
        if [ $((round % 2)) = 1 ]; then run A "$id" "$round"; run B "$id" "$round"
        else run B "$id" "$round"; run A "$id" "$round"; fi
    done
    echo "round $round of $ROUNDS done" >&2
done

echo "| scenario | A median (msgs/s) | B median (msgs/s) | B/A | A runs | B runs |"
echo "|---|---|---|---|---|---|"
for id in $SCENARIOS; do
    a=$(median "$WORK/A-$id.rates") b=$(median "$WORK/B-$id.rates")
    runs() { awk '{ printf "%s%.2fM", sep, $1 / 1e6; sep = ", " }' "$1"; }
    printf "| %s | %.2fM | %.2fM | %.3f | %s | %s |\n" "$(args_of "$id")" \
        "$(echo "$a / 1000000" | bc -l)" "$(echo "$b / 1000000" | bc -l)" \
        "$(echo "$b / $a" | bc -l)" "$(runs "$WORK/A-$id.rates")" "$(runs "$WORK/B-$id.rates")"
done
if [ -n "$SCRAPE_B" ]; then
    n=$(wc -l <"$WORK/scrapes" 2>/dev/null || echo 0)
    ticks=$(awk '{ s += $1 } END { print s + 0 }' "$WORK/metrics-ticks")
    echo
    echo "B was scraped $n times; its metrics thread used $ticks CPU ticks (1/100 s) in all."
fi
