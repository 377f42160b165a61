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
#   3. consoles: the echo load alone, then with 10 consoles' worth of traffic — each a
#      feed client following everything plus what the console's tree and charts tabs
#      poll (/admin/actors every second, /admin/metrics/history and /admin/cluster every
#      2 s): the ratio of the two throughputs (the issue's bound: within 5 %).
#
# Usage: scripts/bench-events.sh [SECS] [COUNT]      (defaults: 20 s, 300000 events)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS=${1:-20}
COUNT=${2:-300000}
cargo build --release --locked --bin mister-smith >&2
cargo bench --no-run --locked --bench event_stream >&2
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

load() { # load DIR: the echo load for SECS seconds, 64 connections; prints completed/s
    "$MS" load --http "127.0.0.1:$PORT" --duration "$SECS" --concurrency 64 --json \
        | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["completed_per_sec"]))'
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

# console I: one console's traffic for SECS + 2 seconds (its feed's summary in WORK/wI.json).
console() {
    "$MS" events --http "127.0.0.1:$PORT" --stats --duration "$((SECS + 2))s" >"$WORK/w$1.json" &
    local feed=$! admin="http://127.0.0.1:$ADMIN" end=$((SECONDS + SECS + 2)) tick=0
    while ((SECONDS < end)); do
        curl -fsS "$admin/admin/actors" >/dev/null
        if ((tick % 2 == 0)); then
            curl -fsS "$admin/admin/metrics/history" >/dev/null
            curl -fsS "$admin/admin/cluster" >/dev/null
        fi
        tick=$((tick + 1))
        sleep 1
    done
    wait "$feed"
}

echo "== 3. consoles"
alone=$(load)
pids=()
for i in $(seq 1 10); do
    console "$i" &
    pids+=($!)
done
sleep 1
watched=$(load)
wait "${pids[@]}"
python3 - "$alone" "$watched" "$WORK" <<'PY'
import json, sys, glob
alone, watched, work = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
each = [json.load(open(f)) for f in sorted(glob.glob(f"{work}/w*.json"))]
print(f"echo load alone: {alone:.0f} tasks/s; with 10 consoles: {watched:.0f} tasks/s "
      f"(ratio {watched / alone:.3f}); each client got {min(e['events'] for e in each)}.."
      f"{max(e['events'] for e in each)} events, p99 latency up to "
      f"{max(e['latency_p99_ms'] for e in each):.0f} ms")
PY
