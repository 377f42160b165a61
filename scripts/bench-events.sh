#!/usr/bin/env bash
# The event feed (GET /api/v1/events/ws), each figure beside a raw baseline of the same run.
# One release node in a cluster of its own (its own nats-server with JetStream; a scratch
# PostgreSQL database at $PG, default postgres://postgres@127.0.0.1:5432, trust auth,
# `createdb`/`dropdb` on PATH, dropped afterwards):
#
#   1. replay: the echo load runs SECS seconds and fills the cluster's event stream; then
#      `mister-smith events --after-seq 0 --stats` reads COUNT events through the node
#      (stream consumer, seal check, filter, JSON frame, WebSocket, client JSON parse),
#      against benches/event_stream.rs reading the same COUNT bare off the stream.
#   2. live: a feed client of every task entry (`--kind task --stats`) while the echo load
#      runs: events/s delivered and the latency from each event's time (stamped when it
#      is published, right after its commit) to its frame at the client, p50/p99.
#   3. consoles, ROUNDS rounds of: the echo load alone; with 10 consoles on the Events
#      view (its feed of everything at `max_rate=50`); with 10 consoles sending every
#      tab's traffic at once (that feed, and what the tree, cluster and charts tabs poll:
#      /admin/actors every second, /admin/metrics/history and /admin/cluster every 2 s).
#      The consoles are benches/consoles.rs: one process, kept-alive connections, as
#      browser tabs. Each as a ratio to the load alone in the same round, and the median
#      ratio over the rounds (the issue's bound for consoles: within 5 %); beside it, the
#      CPU time each completed task took, of the node and nats-server and of the whole
#      machine, as the same ratios: steadier than throughput on a shared 2-core machine.
#   4. once, 10 clients taking every event at full rate (a firehose no page shows).
#
# Usage: scripts/bench-events.sh [SECS] [COUNT] [ROUNDS]   (defaults: 20 s, 300000, 6)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS=${1:-20}
COUNT=${2:-300000}
ROUNDS=${3:-6}
cargo build --release --locked --bin mister-smith >&2
cargo bench --no-run --locked --bench event_stream --bench consoles >&2
MS=$PWD/target/release/mister-smith
NATS_SERVER=${NATS_SERVER:-$(command -v nats-server)}
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

PG=${PG:-postgres://postgres@127.0.0.1:5432}
DB=ms_bench_events_$$
createdb --maintenance-db="$PG/postgres" "$DB"
WORK=$(mktemp -d)
NATS_PORT=$(free_port)
"$NATS_SERVER" -js -a 127.0.0.1 -p "$NATS_PORT" -sd "$WORK/js" >"$WORK/nats.log" 2>&1 &
NATS_PID=$!
cleanup() {
    kill "$NATS_PID" "${NODE:-0}" 2>/dev/null || true
    wait 2>/dev/null || true
    dropdb --maintenance-db="$PG/postgres" "$DB" 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
sleep 0.5
NATS_URL=nats://127.0.0.1:$NATS_PORT

# node DIR: a clustered node in DIR; sets PORT and NODE.
node() {
    mkdir -p "$1"
    PORT=$(free_port)
    ADMIN=$(free_port)
    bench_node "$1" "$PORT" "$ADMIN" MISTER_SMITH__CLUSTER__COOKIE=bench-cookie -- \
        --nats "$NATS_URL" --cluster bench --database "$PG/$DB"
}

# cpu: CPU time so far, in clock ticks, as one line "node nats machine": the node's and
# nats-server's (utime + stime of /proc/PID/stat) and the whole machine's busy time
# (/proc/stat: all but idle, iowait and steal; the load generator, PostgreSQL, consoles).
cpu() {
    python3 - "$NODE" "$NATS_PID" <<'PY'
import os, sys
def ticks(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])
    except (OSError, IndexError):
        return 0
cols = open("/proc/stat").readline().split()[1:]
user, nice, system, idle, iowait, irq, softirq, steal = map(int, cols[:8])
print(ticks(sys.argv[1]), ticks(sys.argv[2]), user + nice + system + irq + softirq)
PY
}

# load: the echo load for SECS seconds, 64 connections; prints completed/s, and leaves in
# WORK/cpu the CPU time it took per completed task, in ms ("node+nats machine").
load() {
    local before after out
    before=$(cpu)
    out=$("$MS" load --http "127.0.0.1:$PORT" --duration "$SECS" --concurrency 64 --json)
    after=$(cpu)
    python3 - "$before" "$after" "$out" "$WORK/cpu" <<'PY'
import json, os, sys
before, after = (list(map(int, a.split())) for a in sys.argv[1:3])
done = json.loads(sys.argv[3])["completed"]
ms = 1000 / os.sysconf("SC_CLK_TCK") / max(done, 1)
d = [b - a for a, b in zip(before, after)]
open(sys.argv[4], "w").write(f"{(d[0] + d[1]) * ms:.4f} {d[2] * ms:.4f}\n")
print(round(json.loads(sys.argv[3])["completed_per_sec"]))
PY
}

echo "== 1. replay"
node "$WORK/n1"
echo "load to fill the stream: $(load) tasks/s"
stream=MS_BENCH_EVENTS
# No more than the stream holds (its last sequence, as the feed's hello says).
held=$("$MS" events --http "127.0.0.1:$PORT" --after-seq 0 --count 1 2>&1 >/dev/null \
    | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["last_seq"])')
COUNT=$((COUNT < held ? COUNT : held))
echo "the stream holds $held events; reading $COUNT"
echo "raw (bare ordered consumer): $(cargo bench --bench event_stream -- "$NATS_URL" "$stream" "$COUNT" 2>/dev/null | tail -1)"
echo "feed (node + WebSocket + client): $("$MS" events --http "127.0.0.1:$PORT" --after-seq 0 --count "$COUNT" --stats)"

echo "== 2. live (every task entry while the echo load runs)"
"$MS" events --http "127.0.0.1:$PORT" --kind task --stats --duration "$((SECS + 2))s" >"$WORK/live.json" &
watcher=$!
sleep 1
echo "load: $(load) tasks/s"
wait "$watcher"
echo "feed: $(cat "$WORK/live.json")"

CONSOLES=$(ls -t target/release/deps/consoles-* | grep -v '\.d$' | head -1)

# watched VIEW: the echo load with 10 consoles of VIEW (benches/consoles.rs: events, tabs
# or firehose), all from one process as browser tabs would send it; prints completed/s
# and leaves the consoles' summary in WORK/consoles.json.
watched() {
    "$CONSOLES" "127.0.0.1:$PORT" "127.0.0.1:$ADMIN" 10 "$((SECS + 2))" "$1" >"$WORK/consoles.json" &
    local consoles=$!
    sleep 1
    load
    wait "$consoles"
}

summary() { # summary: what the consoles of the last run received
    python3 - "$WORK/consoles.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
fail = f", FAILURES: {c['failures'][:3]}" if c["failures"] else ""
print(f"each console got {c['events_min']}..{c['events_max']} events "
      f"(+{c['skipped_min']}..{c['skipped_max']} counted as skipped), {c['polls']} polls in all{fail}")
PY
}

echo "== 3. consoles (ROUNDS=$ROUNDS; the order of the three runs turns round by round, so"
echo "   that drift over the run, such as the database growing, falls on every side)"
ratios=()
for round in $(seq 1 "$ROUNDS"); do
    order=(alone events tabs)
    ((round % 2 == 0)) && order=(tabs events alone)
    declare -A got=() cost=()
    for what in "${order[@]}"; do
        if [[ $what == alone ]]; then got[alone]=$(load); else got[$what]=$(watched "$what"); fi
        cost[$what]=$(cat "$WORK/cpu")
        [[ $what != alone ]] && echo "  round $round, 10 consoles, $what: ${got[$what]} tasks/s; $(summary)"
    done
    line=$(python3 - "${got[alone]}" "${got[events]}" "${got[tabs]}" \
        "${cost[alone]}" "${cost[events]}" "${cost[tabs]}" <<'PY'
import sys
alone, events, tabs = map(float, sys.argv[1:4])
(na, ma), (ne, me), (nt, mt) = (map(float, c.split()) for c in sys.argv[4:7])
print(f"{events / alone:.3f},{tabs / alone:.3f},{ne / na:.3f},{nt / na:.3f},{me / ma:.3f},{mt / ma:.3f}"
      f" alone {alone:.0f} tasks/s, node+nats {na:.3f} ms CPU/task, machine {ma:.3f} ms/task")
PY
)
    IFS=, read -r e t ne nt me mt <<<"${line%% *}"
    echo "round $round: ${line#* }; throughput ratio Events view $e, every tab $t;" \
        "node+nats CPU per task $ne, $nt; machine CPU per task $me, $mt"
    ratios+=("${line%% *}")
    unset got cost
done
python3 - "${ratios[@]}" <<'PY'
import statistics, sys
rows = [list(map(float, a.split(","))) for a in sys.argv[1:]]
names = ["throughput", "node+nats CPU/task", "machine CPU/task"]
for i, name in enumerate(names):
    for j, view in enumerate(["Events view", "every tab"]):
        r = sorted(row[2 * i + j] for row in rows)
        print(f"10 consoles, {view}, {name}: median ratio {statistics.median(r):.3f}"
              f" (rounds: {', '.join(f'{x:.3f}' for x in r)})")
PY

echo "== 4. 10 firehose clients (every event at full rate; no page asks for it), once"
alone=$(load)
fire=$(watched firehose)
echo "alone $alone tasks/s; 10 firehose clients $fire tasks/s, ratio $(python3 -c "print(f'{$fire / $alone:.3f}')"); $(summary)"
