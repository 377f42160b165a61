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
# shellcheck source=scripts/bench-lib.sh
source scripts/bench-lib.sh
SECRET=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')

run_once() { # $1: off|on
    local work port admin env=() token=()
    work=$(mktemp -d)
    port=$(free_port)
    admin=$(free_port)
    if [[ $1 == on ]]; then
        env=(MISTER_SMITH__AUTH__MODE=jwt MISTER_SMITH__AUTH__SECRET="$SECRET")
        token=(--token "$(env "${env[@]}" "$MS" token issue --sub bench --scope tasks:write --scope tasks:read)")
    fi
    bench_node "$work" "$port" "$admin" "${env[@]}" --
    echo "== auth $1"
    bench_load "$work" "$port" "$SECS" "${token[@]}"
    kill "$NODE"; wait "$NODE" 2>/dev/null || true
    rm -rf "$work"
}

for _ in $(seq 1 "$PAIRS"); do
    run_once off
    run_once on
done
