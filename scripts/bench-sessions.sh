#!/usr/bin/env bash
# What a session turn costs over plain steps, on one release node with the `scripted` LLM
# provider (replies at once, no network), each figure next to its raw baseline measured in
# the same run (scripts/sessions-bench.py does the driving):
#
#   1. latency: one at a time on an idle node, a one-turn session whose model calls ONE
#      echo then answers (llm_1, t1_0, llm_2: one loop iteration and the answering call)
#      against a plain task of three chained echo steps; p50/p99 of the node's
#      finished_at - created_at (ms precision) and of the client's wall time, and the
#      difference: the loop iteration's own cost.
#   2. load: SESSIONS sessions at once on one node, each taking TURNS turns in sequence
#      (a turn's model asks for two echo calls in ONE answer, then answers: two LLM calls,
#      two tool calls), the client waiting for each turn to end before the next; against
#      the raw baseline, the same clients submitting plain tasks of four echo steps of the
#      same shape. Turns/s, LLM and tool calls/s, failures, the node's RSS (sampled VmRSS
#      and VmHWM). Each mode on a fresh node.
#
# Usage: scripts/bench-sessions.sh [sqlite|postgres|both] [SESSIONS] [TURNS] [LATENCY_N]
#        (defaults: sqlite 1000 3 150). postgres needs a server at $PG (default
#        postgres://postgres@127.0.0.1:5432, trust auth, `createdb`/`dropdb` on PATH); each
#        run creates a scratch database and drops it afterwards.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DBS=${1:-sqlite}
SESSIONS=${2:-1000}
TURNS=${3:-3}
LATENCY_N=${4:-150}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
cargo build --release --locked --bin mister-smith >&2
MS=$PWD/target/release/mister-smith
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

# start_node WORK [RUN ARGS...]: the scripted node of this bench in WORK; sets PORT, NODE.
start_node() {
    local work=$1 admin
    shift
    PORT=$(free_port)
    admin=$(free_port)
    # The first rule whose match is in the LAST message wins: the echo results ("y1", "x2")
    # end a turn; a user's message ("single ...", "turn N of ...") asks for the tools.
    cat >"$work/script.json" <<'JSON'
{"replies": [
  {"match": "y1", "reply": "done"},
  {"match": "x2", "reply": "done"},
  {"match": "single", "tool_calls": [{"name": "echo", "arguments": {"text": "y1"}}]},
  {"match": "turn", "tool_calls": [{"name": "echo", "arguments": {"text": "x1"}},
                                   {"name": "echo", "arguments": {"text": "x2"}}]}
]}
JSON
    printf '[llm]\nprovider = "scripted"\nscript = "%s/script.json"\n' "$work" >"$work/node.toml"
    bench_node "$work" "$PORT" "$admin" -- --config "$work/node.toml" "$@"
}

stop_node() {
    kill "$NODE"
    wait "$NODE" 2>/dev/null || true
    if grep -qiE 'error|panic' "$1/node.log"; then
        echo "-- node log (errors):"
        grep -iE 'error|panic' "$1/node.log" | head -20
    fi
}

# 1. Latency, one at a time, on an idle SQLite node.
work=$(mktemp -d)
start_node "$work"
echo "== latency: one-turn session (1 tool) vs echo3, one at a time, SQLite"
python3 scripts/sessions-bench.py latency "http://127.0.0.1:$PORT" "$LATENCY_N" 2
stop_node "$work"
rm -rf "$work"

# 2. Load: the raw baseline (plain tasks) first, then sessions, each on a fresh node.
load_run() { # $1: sqlite|postgres  $2: tasks|sessions
    local work db=() name=""
    work=$(mktemp -d)
    if [[ $1 == postgres ]]; then
        name=bench_sessions_$$_$2
        createdb --maintenance-db="$PG/postgres" "$name"
        db=(--database "$PG/$name")
    fi
    start_node "$work" "${db[@]}"
    echo "== load: $2, $SESSIONS clients x $TURNS, $1"
    python3 scripts/sessions-bench.py load "http://127.0.0.1:$PORT" "$2" \
        --sessions "$SESSIONS" --turns "$TURNS" --pid "$NODE"
    stop_node "$work"
    rm -rf "$work"
    if [[ -n $name ]]; then
        dropdb --maintenance-db="$PG/postgres" "$name"
    fi
}

case $DBS in
    sqlite | postgres) dbs=("$DBS") ;;
    both) dbs=(sqlite postgres) ;;
    *) echo "usage: $0 [sqlite|postgres|both] [SESSIONS] [TURNS] [LATENCY_N]" >&2; exit 2 ;;
esac
for d in "${dbs[@]}"; do
    load_run "$d" tasks
    load_run "$d" sessions
done
