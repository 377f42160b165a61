# Shared by the bench scripts (sourced): start a release node in a scratch directory and
# drive `mister-smith load` at it.

# A free TCP port of 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_node WORK PORT ADMIN [ENV=VALUE...] -- [RUN ARGS...]: starts `$MS run` in WORK on
# the two ports (log in WORK/node.log), waits until it is ready, and sets NODE to its pid.
bench_node() {
    local work=$1 port=$2 admin=$3
    shift 3
    local env=(MISTER_SMITH__LOG__LEVEL=warn)
    while [[ $# -gt 0 && $1 != -- ]]; do env+=("$1"); shift; done
    [[ ${1:-} == -- ]] && shift
    (cd "$work" && exec env "${env[@]}" "$MS" run --http "127.0.0.1:$port" \
        --admin "127.0.0.1:$admin" "$@" >"$work/node.log" 2>&1) &
    NODE=$!
    for _ in $(seq 1 100); do
        curl -fsS "http://127.0.0.1:$port/health/ready" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "the node did not become ready; its log:" >&2
    cat "$work/node.log" >&2
    return 1
}

# bench_load WORK PORT SECS [LOAD ARGS...]: 64 connections for SECS seconds, with the raw
# baseline measured first on a scratch SQLite file in WORK.
bench_load() {
    local work=$1 port=$2 secs=$3
    shift 3
    (cd "$work" && "$MS" load --http "127.0.0.1:$port" --duration "$secs" --concurrency 64 \
        --baseline "sqlite://$work/baseline.db" "$@")
}
