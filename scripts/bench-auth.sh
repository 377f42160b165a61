#!/usr/bin/env bash
# The cost of API authentication on the task path: the same release binary, the same load
# (`mister-smith load`, one-step echo tasks, 64 connections), the node with auth off and
# with JWT auth on, alternated (off, on, off, on…) so the machine's drift hits both alike.
# Each run measures its raw baseline first (500-row INSERTs into a scratch SQLite file).
#
# Usage: scripts/bench-auth.sh [pairs] [seconds]      (defaults: 2 pairs of 20 s runs)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PAIRS=${1:-2}
SECS=${2:-20}
cargo build --release --locked --bin mister-smith >&2
MS=$PWD/target/release/mister-smith
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

run_once() { # $1: off|on
    local work port admin node token=()
    work=$(mktemp -d)
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    admin=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    local env=(MISTER_SMITH__LOG__LEVEL=warn)
    if [[ $1 == on ]]; then
        env+=(MISTER_SMITH__AUTH__MODE=jwt MISTER_SMITH__AUTH__SECRET="$SECRET")
        token=(--token "$(env "${env[@]}" "$MS" token issue --sub bench --scope tasks:write --scope tasks:read)")
    fi
    (cd "$work" && exec env "${env[@]}" "$MS" run --http "127.0.0.1:$port" --admin "127.0.0.1:$admin" >"$work/node.log" 2>&1) &
    node=$!
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && break
        sleep 0.1
    done
    echo "== auth $1" 
    (cd "$work" && "$MS" load --http "127.0.0.1:$port" --duration "$SECS" --concurrency 64 \
        --baseline "sqlite://$work/baseline.db" "${token[@]}")
    kill "$node"; wait "$node" 2>/dev/null || true
    rm -rf "$work"
}

for _ in $(seq 1 "$PAIRS"); do
    run_once off
    run_once on
done
