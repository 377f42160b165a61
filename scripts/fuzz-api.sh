#!/usr/bin/env bash
# Fuzzes the API with schemathesis against the node's own served OpenAPI document: a node
# on free ports with a temporary SQLite database and JWT auth on (a random secret in a
# temporary config file; the token minted by `mister-smith token issue` with the scopes of
# every fuzzed route), bounded in time (about 3 minutes at most), checks
# not_a_server_error, status_code_conformance, response_schema_conformance and
# content_type_conformance; zero failures required, a request without the token refused
# with 401, and at least one task accepted (202 on POST /api/v1/tasks, counted afterwards).
# The node's LLM is the scripted provider (it answers "ok"), so sessions and agent tasks
# are fuzzed past validation too.
#
# Env: MS_FUZZ_EXAMPLES examples per operation (default 40)
#      MS_FUZZ_SECONDS  time budget of the schemathesis run (default 120)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "fuzz: $*" >&2; }
SCHEMATHESIS_VERSION=4.32.5
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
VENV="$CARGO_TARGET_DIR/fuzz-venv"

if [[ ! -x "$VENV/bin/st" ]]; then
    say "installing schemathesis==$SCHEMATHESIS_VERSION into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi

cargo build --locked --bin mister-smith
BIN="$CARGO_TARGET_DIR/debug/mister-smith"

WORK=$(mktemp -d)
NODE_PID=""
cleanup() {
    if [[ -n "$NODE_PID" ]]; then kill "$NODE_PID" 2>/dev/null || true; wait "$NODE_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HTTP_PORT=$(free_port)
ADMIN_PORT=$(free_port)
CONFIG="$WORK/fuzz.toml"
# The scripted LLM answers everything at once ("ok"), so sessions and agent tasks run.
printf '{"default": "ok"}\n' >"$WORK/script.json"
(umask 077 && printf '[auth]\nmode = "jwt"\nsecret = "%s"\n[llm]\nprovider = "scripted"\nscript = "%s"\n' \
    "$(python3 -c 'import secrets; print(secrets.token_hex(32))')" "$WORK/script.json" >"$CONFIG")
TOKEN=$("$BIN" token issue --config "$CONFIG" --sub fuzz --ttl 1h \
    --scope tasks:write --scope tasks:read --scope agents:read \
    --scope sessions:write --scope sessions:read)
AUTH=(-H "Authorization: Bearer $TOKEN")
(cd "$WORK" && exec "$BIN" run --config "$CONFIG" --http "127.0.0.1:$HTTP_PORT" \
    --admin "127.0.0.1:$ADMIN_PORT" --database "sqlite://$WORK/fuzz.db" >"$WORK/node.log" 2>&1) &
NODE_PID=$!
BASE="http://127.0.0.1:$HTTP_PORT"
for _ in $(seq 1 100); do
    curl -fsS "$BASE/health/ready" >/dev/null 2>&1 && break
    sleep 0.2
done
curl -fsS "$BASE/health/ready" >/dev/null || { say "the node did not get ready:"; cat "$WORK/node.log" >&2; exit 1; }

ANONYMOUS=$(curl -sS -o /dev/null -w '%{http_code}' "$BASE/api/v1/tasks")
if [[ "$ANONYMOUS" != 401 ]]; then say "GET /api/v1/tasks without a token answered $ANONYMOUS, not 401"; exit 1; fi
say "without a token: 401, as it should be"

say "schemathesis $SCHEMATHESIS_VERSION against $BASE/api/v1/openapi.json"
set +e
timeout 200 "$VENV/bin/st" run "$BASE/api/v1/openapi.json" --url "$BASE" "${AUTH[@]}" \
    --checks not_a_server_error,status_code_conformance,response_schema_conformance,content_type_conformance \
    --mode positive --phases examples,coverage,fuzzing \
    --max-examples "${MS_FUZZ_EXAMPLES:-40}" --max-time "${MS_FUZZ_SECONDS:-120}" \
    --request-timeout 10 --workers 2 --seed 1 \
    --exclude-path /api/v1/tasks/{id}/events \
    --exclude-path /api/v1/sessions/{id}/turns/{turn}/events \
    --suppress-health-check all 2>&1 | tee "$WORK/st.log"
STATUS=${PIPESTATUS[0]}
set -e

CREATED=$(curl -fsS "${AUTH[@]}" "$BASE/api/v1/tasks?limit=1000" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["tasks"]))')
say "schemathesis exit $STATUS; tasks created (202): $CREATED"
if [[ "$STATUS" -ne 0 ]]; then say "failures found (see above)"; exit 1; fi
if [[ "$CREATED" -lt 1 ]]; then say "no task was accepted: POST /api/v1/tasks never reached 202"; exit 1; fi
say "passed"
