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
#   3. consoles, ROUNDS rounds of: the echo load alone; with 10 consoles' worth of
#      traffic — each what the console's live views ask for: the Events view's feed of
#      everything at `max_rate=50`, and what the tree, cluster and charts tabs poll
#      (/admin/actors every second, /admin/metrics/history and /admin/cluster every 2 s);
#      and with 10 clients taking every event at full rate (a firehose no page shows, for
#      the record). Each as a ratio to the load alone in the same round (the issue's
#      bound for consoles: within 5 %).
#
# Usage: scripts/bench-events.sh [SECS] [COUNT] [ROUNDS]   (defaults: 20 s, 300000, 3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECS=${1:-20}
COUNT=${2:-300000}
ROUNDS=${3:-3}
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

# console I RATE: one console's traffic for SECS + 2 seconds (its feed's summary in
# WORK/wI.json); RATE is the feed's max_rate, 0 for none (and then no polls: a firehose).
console() {
    local rate=() polls=1
    if (($2 > 0)); then rate=(--max-rate "$2"); else polls=0; fi
    "$MS" events --http "127.0.0.1:$PORT" --stats "${rate[@]}" --duration "$((SECS + 2))s" >"$WORK/w$1.json" &
    local feed=$! admin="http://127.0.0.1:$ADMIN" end=$((SECONDS + SECS + 2)) tick=0
    while ((polls && SECONDS < end)); do
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

# watched RATE: the echo load with 10 consoles of console RATE; prints completed/s.
watched() {
    rm -f "$WORK"/w*.json
    local pids=() i
    for i in $(seq 1 10); do
        console "$i" "$1" &
        pids+=($!)
    done
    sleep 1
    load
    wait "${pids[@]}"
}

report() { # report WHAT ALONE WATCHED
    python3 - "$@" "$WORK" <<'PY'
import json, sys, glob
what, alone, watched, work = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
each = [json.load(open(f)) for f in sorted(glob.glob(f"{work}/w*.json"))]
print(f"  {what}: {watched:.0f} tasks/s, ratio {watched / alone:.3f}; each client got "
      f"{min(e['events'] for e in each)}..{max(e['events'] for e in each)} events "
      f"(+{min(e['skipped'] for e in each)}..{max(e['skipped'] for e in each)} counted as skipped), "
      f"p99 latency up to {max(e['latency_p99_ms'] for e in each):.0f} ms")
PY
}

echo "== 3. consoles"
for round in $(seq 1 "$ROUNDS"); do
    alone=$(load)
    echo "round $round: echo load alone: $alone tasks/s"
    consoles=$(watched 50)
    report "10 consoles (Events view at max_rate=50, tabs polled)" "$alone" "$consoles"
    firehose=$(watched 0)
    report "10 firehose clients (every event, full rate)" "$alone" "$firehose"
done
