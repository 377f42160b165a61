#!/usr/bin/env bash
# What the agent loop costs over plain steps: the same release binary and load
# (`mister-smith load`, 64 connections, SQLite), alternating `echo3` (three chained echo
# steps) and `agent` (an agent task whose scripted LLM answers at once: one call asking
# for `echo`, the echo, a second call that answers: three steps too). The difference is
# the loop's own work: growing the plan, rebuilding the conversation, the worker's LLM
# call through the provider layer. Each run measures its raw baseline first. Then the
# latency of one task at a time (scripts/agent-latency.py).
#
# Usage: scripts/bench-agent.sh [pairs] [seconds]      (defaults: 2 pairs of 20 s runs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PAIRS=${1:-2}
SECS=${2:-20}
cargo build --release --locked --bin mister-smith >&2
MS=$PWD/target/release/mister-smith
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

run_once() { # $1: echo3|agent|latency
    local work port admin
    work=$(mktemp -d)
    port=$(free_port)
    admin=$(free_port)
    # The first rule answers once the echo's result ("x") is the last message.
    cat >"$work/script.json" <<'JSON'
{"replies": [
  {"match": "x", "reply": "done"},
  {"match": "load", "tool_calls": [{"name": "echo", "arguments": {"text": "x"}}]}
]}
JSON
    printf '[llm]\nprovider = "scripted"\nscript = "%s/script.json"\n' "$work" >"$work/node.toml"
    bench_node "$work" "$port" "$admin" -- --config "$work/node.toml"
    echo "== task $1"
    if [[ $1 == latency ]]; then
        python3 scripts/agent-latency.py "http://127.0.0.1:$port"
    else
        bench_load "$work" "$port" "$SECS" --task "$1"
    fi
    kill "$NODE"; wait "$NODE" 2>/dev/null || true
    rm -rf "$work"
}

for _ in $(seq 1 "$PAIRS"); do
    run_once echo3
    run_once agent
done

# Latency, one task at a time on an idle node of the same configuration.
run_once latency
