#!/usr/bin/env bash
# A long randomized fault run for operators (not CI): three clustered nodes on a
# nats-server and a fresh PostgreSQL database of this run, a steady load of
# `file` append → `sleep` → `file` append tasks, and random faults at random times:
#   kill        SIGKILL a node (detection and resume timed), then start it again
#   pause       SIGSTOP a node for 1–15 s, then SIGCONT
#   nats        stop the nats-server for 1–10 s, then start it again (same port, storage)
#   pg_kill     terminate every connection to the database, 1–5 times
#   pg_refuse   the database refuses connections for 1–30 s (open ones terminated)
# At the end everything is healed, every task must finish, and the summary counts:
# tasks run, faults by kind, lost / stuck / failed / double-recorded tasks and steps,
# unrecorded executions (appends without a recorded attempt), detection/resume times.
#
# Usage: scripts/chaos.sh
#   DURATION=300          seconds of faults
#   SEED=<n>              repeat a fault plan (kinds, victims, timings; printed at start)
#   KINDS=kill,pause,…    only these kinds of fault (default: all five)
#   MS_BIN=<path>         use this binary instead of building one (cargo build --release)
#   MS_TEST_POSTGRES_URL  superuser URL of the server (default postgres://postgres@127.0.0.1:5432/postgres)
#   WORKERS=4 PAUSE=0.1   load: submitters, and each one's pause between submissions (s)
#   KEEP=1                keep the database (the run's directory with logs is always kept)
# Needs: nats-server, psql, curl, python3. Exit status 1 when an invariant was broken.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "chaos: $*" >&2; }
die() { echo "chaos: ERROR: $*" >&2; exit 2; }

DURATION=${DURATION:-300}
SEED=${SEED:-$(( $(date +%s) % 1000000 ))}
RANDOM=$SEED
PG=${MS_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres}
WORKERS=${WORKERS:-4}
PAUSE=${PAUSE:-0.1}
PATH="$PATH:/usr/sbin"
for tool in nats-server psql curl python3; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install nats-server postgresql-client curl python3)"
done

# --- the binary ------------------------------------------------------------------
if [ -z "${MS_BIN:-}" ]; then
    say "building the release binary"
    cargo build --release --bin mister-smith >&2
    TARGET=$(cargo metadata --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    MS_BIN="$TARGET/release/mister-smith"
fi
[ -x "$MS_BIN" ] || die "no binary at $MS_BIN"

WORK=$(mktemp -d /tmp/ms-chaos.XXXXXX)
mkdir -p "$WORK/workspace"
say "seed $SEED (SEED=$SEED repeats this fault plan), $DURATION s of faults, logs in $WORK"

rand() { echo $(( $1 + RANDOM % ($2 - $1 + 1) )); }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
sql() { psql "$1" -qtAX -v ON_ERROR_STOP=1 -c "$2"; }

# --- PostgreSQL: a database of this run ----------------------------------------------
DB="ms_chaos_$$_$(date +%s)"
PG_BASE=${PG%%\?*}
PG_QUERY=""
[ "$PG" != "$PG_BASE" ] && PG_QUERY="?${PG#*\?}"
DB_URL="${PG_BASE%/*}/$DB$PG_QUERY"
sql "$PG" "CREATE DATABASE \"$DB\"" || die "cannot create a database through $PG (a superuser URL?)"
say "database $DB"
terminate() {
    sql "$PG" "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = '$DB' AND pid <> pg_backend_pid()) t"
}
allow_connections() { sql "$PG" "ALTER DATABASE \"$DB\" ALLOW_CONNECTIONS $1" >/dev/null; }

# --- NATS ------------------------------------------------------------------------------
NATS_PORT=$(free_port)
NATS_PID=""
nats_start() {
    nats-server -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/jetstream" >>"$WORK/nats.log" 2>&1 &
    NATS_PID=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && return 0
        sleep 0.1
    done
    die "nats-server did not start (see $WORK/nats.log)"
}
nats_stop() { kill "$NATS_PID" 2>/dev/null; wait "$NATS_PID" 2>/dev/null || true; NATS_PID=""; }

# --- the nodes -------------------------------------------------------------------------
NAMES=(n1 n2 n3)
declare -a PID HTTP ADMIN LISTEN STATE
for i in 0 1 2; do
    HTTP[i]=127.0.0.1:$(free_port); ADMIN[i]=127.0.0.1:$(free_port); LISTEN[i]=127.0.0.1:$(free_port)
    mkdir -p "$WORK/${NAMES[i]}"
done
node_start() {
    local i=$1
    (cd "$WORK/${NAMES[i]}" && exec env \
        MISTER_SMITH__CLUSTER__COOKIE=chaos-cookie \
        MISTER_SMITH__CLUSTER__LISTEN="${LISTEN[i]}" \
        MISTER_SMITH__TOOLS__FILE__WORKSPACE="$WORK/workspace" \
        MISTER_SMITH__DATABASE__MAX_CONNECTIONS=6 \
        "$MS_BIN" run --node "${NAMES[i]}" --cluster "chaos-$$" --nats "nats://127.0.0.1:$NATS_PORT" \
            --database "$DB_URL" --http "${HTTP[i]}" --admin "${ADMIN[i]}" \
            >>"$WORK/${NAMES[i]}/node.log" 2>&1) &
    PID[i]=$!
    STATE[i]=up
}
node_wait_ready() {
    local i=$1
    for _ in $(seq 600); do
        curl -fs -o /dev/null "http://${HTTP[i]}/health/ready" && return 0
        kill -0 "${PID[i]}" 2>/dev/null || die "${NAMES[i]} exited (see $WORK/${NAMES[i]}/node.log)"
        sleep 0.1
    done
    die "${NAMES[i]} not ready after 60 s (see $WORK/${NAMES[i]}/node.log)"
}
# Whether node $1 sees node $2 with status $3 in /admin/cluster.
sees() {
    curl -fs "http://${ADMIN[$1]}/admin/cluster" 2>/dev/null | python3 -c '
import json, sys
view = json.load(sys.stdin)
sys.exit(0 if any(m["node"] == sys.argv[1] and m["status"] == sys.argv[2] for m in view["members"]) else 1)
' "${NAMES[$2]}" "$3"
}
unfinished_of() {
    sql "$DB_URL" "SELECT count(*) FROM tasks WHERE owner = '$1'
                   AND status NOT IN ('succeeded', 'failed', 'cancelled', 'timed_out')" 2>/dev/null || echo "?"
}

LOAD_PID=""
cleanup() {
    set +e
    [ -n "$LOAD_PID" ] && kill "$LOAD_PID" 2>/dev/null
    for i in 0 1 2; do [ -n "${PID[i]:-}" ] && kill -9 "${PID[i]}" 2>/dev/null; done
    [ -n "$NATS_PID" ] && kill "$NATS_PID" 2>/dev/null
    wait 2>/dev/null
    allow_connections true 2>/dev/null
    if [ "${KEEP:-0}" = 1 ]; then say "kept database $DB"; else sql "$PG" "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null; fi
}
trap cleanup EXIT

nats_start
for i in 0 1 2; do node_start "$i"; done
for i in 0 1 2; do node_wait_ready "$i"; done
say "nodes ready: ${HTTP[*]}"

# --- the load ------------------------------------------------------------------------------
# Each submission is a line of $WORK/submissions.jsonl: marker, node, HTTP status, task id.
python3 - "$WORK" "$WORKERS" "$PAUSE" "${NAMES[0]}=${HTTP[0]}" "${NAMES[1]}=${HTTP[1]}" "${NAMES[2]}=${HTTP[2]}" <<'EOF' &
import itertools, json, os, sys, threading, time, urllib.error, urllib.request, uuid
work, workers, pause, targets = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), [t.split("=") for t in sys.argv[4:]]
out, lock, turn = open(os.path.join(work, "submissions.jsonl"), "a"), threading.Lock(), itertools.count()
def task(marker, n):
    append = lambda step: {"op": "append", "path": f"{marker}.log", "content": f"{marker} {step}\n"}
    return {"description": f"fault task {marker}", "steps": [
        {"id": "a", "tool": "file", "args": append("a")},
        {"id": "b", "tool": "sleep", "args": {"ms": 200 + n * 53 % 301}, "depends_on": ["a"]},
        {"id": "c", "tool": "file", "args": append("c"), "depends_on": ["b"]}]}
def worker():
    while not os.path.exists(os.path.join(work, "stop")):
        n = next(turn)
        node, addr = targets[n % len(targets)]
        marker = uuid.uuid4().hex
        body = json.dumps(task(marker, n)).encode()
        req = urllib.request.Request(f"http://{addr}/api/v1/tasks", body, {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                status, task_id = r.status, json.load(r).get("task_id")
        except urllib.error.HTTPError as e:
            status, task_id = e.code, None
        except Exception as e:
            status, task_id = type(e).__name__, None
        with lock:
            out.write(json.dumps({"marker": marker, "node": node, "status": status, "task_id": task_id}) + "\n")
            out.flush()
        time.sleep(pause)
threads = [threading.Thread(target=worker) for _ in range(workers)]
for t in threads: t.start()
for t in threads: t.join()
EOF
LOAD_PID=$!

# --- the faults ----------------------------------------------------------------------------
declare -A FAULTS=([kill]=0 [pause]=0 [nats]=0 [pg_kill]=0 [pg_refuse]=0)
IFS=, read -r -a KINDS <<<"${KINDS:-kill,pause,nats,pg_kill,pg_refuse}"
for k in "${KINDS[@]}"; do [ -n "${FAULTS[$k]+set}" ] || die "unknown fault kind $k in KINDS"; done
DETECT=() RESUME=()
log_fault() { echo "$(date +%T.%3N) $*" | tee -a "$WORK/faults.log" >&2; }

fault_kill() {
    local v=$1 t0 seen="" resumed="" w=$(( ($1 + 1) % 3 ))
    kill -9 "${PID[v]}"; wait "${PID[v]}" 2>/dev/null || true; STATE[v]=dead
    t0=$(now_ms)
    log_fault "kill ${NAMES[v]} ($(unfinished_of "${NAMES[v]}") unfinished tasks)"
    for _ in $(seq 300); do
        [ -z "$seen" ] && sees "$w" "$v" down && seen=$(( $(now_ms) - t0 ))
        [ -z "$resumed" ] && [ "$(unfinished_of "${NAMES[v]}")" = 0 ] && resumed=$(( $(now_ms) - t0 ))
        [ -n "$seen" ] && [ -n "$resumed" ] && break
        sleep 0.1
    done
    log_fault "  ${NAMES[v]} seen down by ${NAMES[w]} after ${seen:-?} ms, its tasks resumed after ${resumed:-?} ms"
    [ -n "$seen" ] && DETECT+=("$seen")
    [ -n "$resumed" ] && RESUME+=("$resumed")
    sleep "$(rand 0 3)"
    node_start "$v"; node_wait_ready "$v"
    log_fault "  ${NAMES[v]} started again"
}
fault_pause() {
    local v=$1 secs
    secs=$(rand 1 15)
    log_fault "pause ${NAMES[v]} for $secs s"
    kill -STOP "${PID[v]}"; STATE[v]=paused
    sleep "$secs"
    kill -CONT "${PID[v]}"; STATE[v]=up
}
fault_nats() {
    local secs
    secs=$(rand 1 10)
    log_fault "nats-server down for $secs s"
    nats_stop; sleep "$secs"; nats_start
}
fault_pg_kill() {
    local times n
    times=$(rand 1 5)
    for _ in $(seq "$times"); do n=$(terminate); log_fault "pg_kill: $n connections terminated"; sleep 0.5; done
}
fault_pg_refuse() {
    local secs
    secs=$(rand 1 30)
    log_fault "pg_refuse for $secs s"
    allow_connections false; terminate >/dev/null
    sleep "$secs"
    allow_connections true
}

START=$(date +%s)
sleep 5
while [ $(( $(date +%s) - START )) -lt "$DURATION" ]; do
    kind=${KINDS[RANDOM % ${#KINDS[@]}]}
    victim=$(( RANDOM % 3 ))
    "fault_$kind" "$victim"
    FAULTS[$kind]=$(( FAULTS[$kind] + 1 ))
    sleep "$(rand 2 10)"
done

# --- heal, drain, check -------------------------------------------------------------------------
log_fault "healing everything"
allow_connections true
[ -z "$NATS_PID" ] && nats_start
for i in 0 1 2; do
    case ${STATE[i]} in
        paused) kill -CONT "${PID[i]}"; STATE[i]=up ;;
        dead) node_start "$i" ;;
    esac
done
for i in 0 1 2; do node_wait_ready "$i"; done
sleep 3
touch "$WORK/stop"; wait "$LOAD_PID" 2>/dev/null || true; LOAD_PID=""
HEALED=$(date +%s)

say "waiting for every task to finish (at most 120 s)"
FAULT_SUMMARY=""
for k in "${KINDS[@]}"; do FAULT_SUMMARY+="$k ${FAULTS[$k]}, "; done
python3 - "$WORK" "${FAULT_SUMMARY%, }" "${DETECT[*]:-}" "${RESUME[*]:-}" "$SEED" "$DURATION" \
    "http://${HTTP[0]}" "http://${HTTP[1]}" "http://${HTTP[2]}" <<'EOF'
import collections, concurrent.futures, json, os, statistics, sys, time, urllib.request
work, faults, detect, resume, seed, duration, urls = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], sys.argv[6], sys.argv[7:]
FINAL = {"succeeded", "failed", "cancelled", "timed_out"}
def get(path):
    for _ in range(100):
        for url in urls:
            try:
                with urllib.request.urlopen(url + path, timeout=10) as r:
                    return json.load(r)
            except Exception:
                pass
        time.sleep(0.3)
    raise SystemExit(f"chaos: no node answers GET {path}")
def listing():
    tasks, cursor = [], None
    while True:
        page = get("/api/v1/tasks?limit=1000" + (f"&cursor={cursor}" if cursor else ""))
        tasks += page["tasks"]
        cursor = page.get("next_cursor")
        if not cursor:
            return tasks
start = time.time()
while True:
    listed = listing()
    if all(t["status"] in FINAL for t in listed) or time.time() - start > 120:
        break
    time.sleep(1)
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    tasks = {t["task_id"]: t for t in pool.map(lambda t: get(f"/api/v1/tasks/{t['task_id']}"), listed)}
subs = [json.loads(l) for l in open(os.path.join(work, "submissions.jsonl"))]
accepted = {s["task_id"] for s in subs if s["status"] == 202 and s["task_id"]}
refused = collections.Counter(str(s["status"]) for s in subs if s["status"] != 202)
def lines(marker, step):
    try:
        return sum(1 for l in open(os.path.join(work, "workspace", f"{marker}.log")) if l.strip() == f"{marker} {step}")
    except FileNotFoundError:
        return 0
lost = sorted(accepted - tasks.keys())
stuck, running, failed, double_recorded, unrecorded, doubles, executions, attempts, examples = 0, 0, 0, 0, 0, 0, 0, 0, []
for id, t in tasks.items():
    if t["status"] not in FINAL:
        stuck += 1; examples.append(f"stuck: {id} {t['status']} owner {t['owner']}")
    elif t["status"] != "succeeded":
        failed += 1; examples.append(f"failed: {id} {t['status']}: {t['error']}")
    marker = (t.get("description") or "").removeprefix("fault task ")
    for s in t["steps"]:
        if t["status"] in FINAL and s["status"] == "running":
            running += 1; examples.append(f"stuck: {id} is {t['status']} with step {s['id']} running")
        passed = sum(1 for a in s["attempts"] if (a.get("verdict") or {}).get("passed"))
        results = sum(1 for e in t["events"] if e["kind"] == "step.succeeded" and e["data"].get("step") == s["id"])
        if passed > 1 or results > 1:
            double_recorded += 1; examples.append(f"double-recorded: {id} step {s['id']}")
        if s["id"] in ("a", "c"):
            ran = lines(marker, s["id"])
            executions += ran; attempts += len(s["attempts"]); doubles += max(0, ran - 1)
            if ran > len(s["attempts"]):
                unrecorded += ran - len(s["attempts"])
                examples.append(f"unrecorded: {id} step {s['id']} ran {ran}, {len(s['attempts'])} attempts")
stored_markers = {(t.get("description") or "").removeprefix("fault task ") for t in tasks.values()}
for s in subs:
    if s["marker"] not in stored_markers:
        for step in ("a", "c"):
            ran = lines(s["marker"], step)
            executions += ran; unrecorded += ran
            if ran: examples.append(f"unrecorded: marker {s['marker']} step {step} ran {ran}, no task stored")
def spread(xs):
    xs = sorted(int(x) for x in xs.split())
    return f"n={len(xs)} min {xs[0]} ms, median {int(statistics.median(xs))} ms, max {xs[-1]} ms" if xs else "not measured"
print(f"""
chaos summary (seed {seed}, {duration} s of faults, 3 nodes)
  tasks: {len(subs)} submitted, {len(accepted)} accepted, refused {dict(refused)}, {len(tasks)} stored/run
  faults injected: {faults}
  lost {len(lost)}, stuck {stuck} (and {running} steps left running in final tasks), failed {failed}, double-recorded {double_recorded}, unrecorded executions {unrecorded}
  side effects: {executions} executions, {attempts} attempts recorded, {doubles} double executions
  detection after SIGKILL: {spread(detect)}
  resume after SIGKILL (none left on the dead node): {spread(resume)}""")
for e in (examples + [f"lost: {id}" for id in lost])[:15]:
    print("   -", e)
bad = len(lost) + stuck + running + failed + double_recorded + unrecorded
sys.exit(1 if bad else 0)
EOF
