#!/usr/bin/env bash
# Run the whole Mister Smith test suite.
#
# Works on a fresh Debian 12 machine (as root it installs what is missing) and
# on a developer machine that already has the services. The integration tests
# need a real nats-server binary and a PostgreSQL superuser URL; this script
# provides both through environment variables:
#   MS_TEST_NATS_SERVER   path to the nats-server binary
#   MS_TEST_POSTGRES_URL  superuser URL (kept as-is if already set)
#
# Extra arguments are passed to `cargo test`, e.g. `scripts/test.sh -- --nocapture`.
# MS_TEST_SETUP_ONLY=1 prepares everything and stops before cargo.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { echo "test.sh: $*" >&2; }
die() { echo "test.sh: ERROR: $*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# apt-get update is slow; do it at most once per run.
APT_UPDATED=0
apt_install() {
    if ! is_root; then
        die "package(s) '$*' missing and not running as root; install them: apt-get install $*"
    fi
    if [ "$APT_UPDATED" -eq 0 ]; then
        say "apt-get update"
        apt-get update -qq >&2
        APT_UPDATED=1
    fi
    say "apt-get install -y $*"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2
}

# --- NATS -------------------------------------------------------------------
# Tests start their own nats-server processes; they only need the binary.
# Debian puts it in /usr/sbin, which a non-root PATH may lack.
PATH="$PATH:/usr/sbin"
if ! command -v nats-server >/dev/null 2>&1; then
    say "nats-server not found; installing package nats-server"
    apt_install nats-server
    command -v nats-server >/dev/null 2>&1 || die "package nats-server installed but nats-server is not on PATH"
fi
say "using nats-server $(nats-server --version 2>&1 | head -n1) at $(command -v nats-server)"

# --- docker-compose -----------------------------------------------------------
# tests/compose.rs checks docker-compose.yml with `docker-compose config` (no Docker
# engine needed for that).
if ! command -v docker-compose >/dev/null 2>&1; then
    say "docker-compose not found; installing package docker-compose"
    apt_install docker-compose
fi

# --- tmux ----------------------------------------------------------------------
# tests/chat_shell.rs drives the chat shell in a real terminal through tmux.
if ! command -v tmux >/dev/null 2>&1; then
    say "tmux not found; installing package tmux"
    apt_install tmux
fi

# --- Chromium ------------------------------------------------------------------
# tests/console.rs drives the operator console in headless Chromium through chromedriver.
if ! command -v chromedriver >/dev/null 2>&1; then
    say "chromedriver not found; installing packages chromium and chromium-driver"
    apt_install chromium chromium-driver
    command -v chromedriver >/dev/null 2>&1 \
        || die "packages chromium and chromium-driver installed but chromedriver is not on PATH"
fi

# --- PostgreSQL: installed ---------------------------------------------------
if ! command -v pg_ctlcluster >/dev/null 2>&1 || ! command -v psql >/dev/null 2>&1; then
    say "PostgreSQL not found; installing package postgresql"
    apt_install postgresql
fi

# --- PostgreSQL: running -----------------------------------------------------
# Skip starting a server when MS_TEST_POSTGRES_URL points somewhere already.
if [ -z "${MS_TEST_POSTGRES_URL:-}" ]; then
    if pg_isready -q -h 127.0.0.1 -p 5432; then
        say "PostgreSQL already accepting connections on 127.0.0.1:5432"
    else
        # There is no systemd here (containers, CI), so start the Debian
        # cluster directly. Newest installed major version wins.
        pg_version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n1 || true)"
        [ -n "$pg_version" ] || die "no cluster under /etc/postgresql; is package postgresql installed?"
        clusters="$(pg_lsclusters -h 2>/dev/null | awk '{print $1, $2}' || true)"
        if ! grep -qx "$pg_version main" <<<"$clusters"; then
            is_root || die "PostgreSQL cluster $pg_version/main does not exist; create it as root: pg_createcluster $pg_version main"
            say "creating PostgreSQL cluster $pg_version/main"
            pg_createcluster "$pg_version" main >&2
        fi
        is_root || die "PostgreSQL is not running; start it as root: pg_ctlcluster $pg_version main start"
        say "starting PostgreSQL cluster $pg_version/main"
        # 'start' fails if it is already running (e.g. on another port); the
        # readiness wait below is the real check.
        pg_ctlcluster --skip-systemctl-redirect "$pg_version" main start >&2 || true

        say "waiting for PostgreSQL to accept connections on 127.0.0.1:5432"
        for _ in $(seq 1 60); do
            pg_isready -q -h 127.0.0.1 -p 5432 && break
            sleep 0.5
        done
        pg_isready -q -h 127.0.0.1 -p 5432 \
            || die "PostgreSQL did not accept connections on 127.0.0.1:5432 within 30s (see /var/log/postgresql/)"
    fi
fi

# --- PostgreSQL: superuser URL -----------------------------------------------
# -w: never prompt for a password (CI has no stdin/tty).
pg_url_works() { psql "$1" -w -X -q -t -A -c 'SELECT 1' >/dev/null 2>&1; }

if [ -n "${MS_TEST_POSTGRES_URL:-}" ]; then
    say "using MS_TEST_POSTGRES_URL from the environment"
    pg_url_works "$MS_TEST_POSTGRES_URL" || die "MS_TEST_POSTGRES_URL is set but psql cannot connect with it"
else
    # Trust auth (this kind of dev machine) needs no password.
    url="postgres://postgres@127.0.0.1:5432/postgres"
    if ! pg_url_works "$url"; then
        # A fresh apt install uses scram-sha-256 for TCP; give the postgres
        # role a known password via the local peer-auth socket.
        url="postgres://postgres:mister-smith@127.0.0.1:5432/postgres"
        if ! pg_url_works "$url"; then
            is_root || die "cannot connect to PostgreSQL as superuser postgres; set MS_TEST_POSTGRES_URL to a superuser URL"
            say "setting a password for PostgreSQL role postgres (TCP auth needs one)"
            # cd / so psql does not warn about an unreadable working directory.
            (cd / && runuser -u postgres -- psql -X -q -c "ALTER USER postgres PASSWORD 'mister-smith'") >&2
        fi
    fi
    pg_url_works "$url" || die "cannot connect to PostgreSQL at $url; set MS_TEST_POSTGRES_URL to a superuser URL"
    export MS_TEST_POSTGRES_URL="$url"
fi
say "MS_TEST_POSTGRES_URL=$(echo "$MS_TEST_POSTGRES_URL" | sed -E 's#(://[^:/@]+:)[^@]*@#\1***@#')"

MS_TEST_NATS_SERVER="$(command -v nats-server)"
export MS_TEST_NATS_SERVER
say "MS_TEST_NATS_SERVER=$MS_TEST_NATS_SERVER"

if [ "${MS_TEST_SETUP_ONLY:-0}" = "1" ]; then
    say "MS_TEST_SETUP_ONLY=1: setup done, not running cargo test"
    exit 0
fi

# Libraries, binaries and integration tests (not --all-targets: that would also run the
# criterion benches as tests; there are no doc tests). The totals go on one last line,
# `tests: N passed, N failed`, also kept in target/test-summary.txt for .ci/run.
say "running: cargo test --workspace --locked --lib --bins --tests $*"
log=$(mktemp)
set +e
cargo test --workspace --locked --lib --bins --tests "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
passed=$(grep -Eo '^test result: [A-Za-z]+\. [0-9]+ passed' "$log" | awk '{s += $4} END {print s + 0}')
failed=$(grep -Eo '[0-9]+ failed;' "$log" | awk '{s += $1} END {print s + 0}')
rm -f "$log"
mkdir -p target
echo "tests: $passed passed, $failed failed" | tee target/test-summary.txt
exit "$status"
