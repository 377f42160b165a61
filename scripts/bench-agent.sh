#!/usr/bin/env bash
# What the agent loop costs over plain steps: the same release binary and load
# (`mister-smith load`, 64 connections, SQLite), alternating `echo3` (three chained echo
# steps) and `agent` (an agent task whose scripted LLM answers at once: one call asking
# for `echo`, the echo, a second call that answers: three steps too). The difference is
# the loop's own work: growing the plan, rebuilding the conversation, the worker's LLM
# call through the provider layer. Each run measures its raw baseline first. Then the
# latency of one task at a time (scripts/agent-latency.py).
#
# The same rounds measure what the role hops cost: `planned3` (a description the Planner
# agent plans, scripted to the `echo3` plan: one more LLM call, through the Planner
# agent) and `judged3` (`echo3` with each step's output judged by the LLM, through a
# Critic agent: three more calls and hops).
#
# Usage: scripts/bench-agent.sh [rounds] [seconds]     (defaults: 2 rounds of 20 s runs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=${1:-2}
SECS=${2:-20}
cargo build --release --locked --bin mister-smith >&2
MS=$PWD/target/release/mister-smith
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh

run_once() { # $1: echo3|agent|planned3|judged3|latency
    local work port admin
    work=$(mktemp -d)
    port=$(free_port)
    admin=$(free_port)
    # The first rule that matches wins: the judge's and the Planner's prompts before the
    # agent's ("x", the echo's result, answers; the Planner's system prompt holds an "x").
    cat >"$work/script.json" <<'JSON'
{"replies": [
  {"match": "load-judge", "reply": "PASS it echoed"},
  {"match": "load-plan", "reply": "{\"steps\": [{\"id\": \"a\", \"tool\": \"echo\", \"args\": {\"text\": \"x\"}}, {\"id\": \"b\", \"tool\": \"echo\", \"args\": {\"text\": \"x\"}, \"depends_on\": [\"a\"]}, {\"id\": \"c\", \"tool\": \"echo\", \"args\": {\"text\": \"x\"}, \"depends_on\": [\"b\"]}]}"},
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

for _ in $(seq 1 "$ROUNDS"); do
    for kind in echo3 agent planned3 judged3; do
        run_once "$kind"
    done
done

# Latency, one task at a time on an idle node of the same configuration.
run_once latency
