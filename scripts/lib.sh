# Shared steps of the set-up scripts. Sourced, not run.

VENV="${IMAGEGATE_VENV:-.venv}"
PYTHON="${IMAGEGATE_PYTHON:-python3}"

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root to run: $*" >&2; return 1; fi
}

# Python >= 3.11 with venv, redis-server (and npm for the tests, with "test"),
# from Debian's packages when missing.
ensure_system_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  [ "${1:-}" = test ] && ! command -v npm >/dev/null && missing+=(nodejs npm)  # S3 test server; the docs' Node samples
  # the multi-host tests: hosts in network namespaces, one with its clock off
  [ "${1:-}" = test ] && ! command -v ip >/dev/null && missing+=(iproute2)
  [ "${1:-}" = test ] && ! command -v faketime >/dev/null && missing+=(faketime)
  # the browser tests: Playwright drives Debian's Chromium (no browser download)
  [ "${1:-}" = test ] && [ ! -x /usr/bin/chromium ] && missing+=(chromium)
  # the SQL system of record's tests: PostgreSQL (initdb, pg_ctl) besides SQLite
  [ "${1:-}" = test ] && [ -z "$(pg_bin initdb)" ] && missing+=(postgresql)
  "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || missing+=(python3 python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} from Debian's packages"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

# The path of a PostgreSQL server program (initdb, pg_ctl, ...), or nothing.
pg_bin() {
  command -v "$1" 2>/dev/null && return
  ls -d /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -n 1
}

# Whether user postgres reaches a PostgreSQL server on 127.0.0.1:$1 without a password.
pg_trusts() {
  "$(pg_bin psql)" -h 127.0.0.1 -p "$1" -U postgres -w -d postgres -Atqc 'select 1' \
    >/dev/null 2>&1
}

# A PostgreSQL server on 127.0.0.1 that user postgres reaches without a password, as the
# tests expect (they create and drop databases of their own there): the one on 5432 if it
# does, else a cluster of the test run's own (data in $IMAGEGATE_TEST_PG_DIR, left running
# for the next run) on 5432, or on 55432 when another server holds 5432 (e.g. Debian's
# own, which asks for passwords); IMAGEGATE_TEST_POSTGRES then tells the tests.
ensure_postgres() {
  local dir="${IMAGEGATE_TEST_PG_DIR:-${TMPDIR:-/tmp}/imagegate-test-postgres}"
  local port=5432 run=()
  pg_trusts 5432 && return
  "$PYTHON" -c 'import socket; socket.create_connection(("127.0.0.1", 5432), 1)' 2>/dev/null \
    && port=55432
  export IMAGEGATE_TEST_POSTGRES="postgresql+psycopg://postgres@127.0.0.1:$port"
  pg_trusts "$port" && return
  [ "$(id -u)" = 0 ] && run=(runuser -u postgres --)
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    say "creating a PostgreSQL cluster for the tests in $dir"
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    "${run[@]}" "$(pg_bin initdb)" -D "$dir/data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  say "starting PostgreSQL on 127.0.0.1:$port (data in $dir)"
  "${run[@]}" "$(pg_bin pg_ctl)" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >/dev/null
}

# A virtualenv with the package installed (extras in $1, e.g. "test").
ensure_venv() {
  local extras="${1:-}"
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  say "installing imagegate${extras:+ [$extras]} into $VENV"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${extras:+[$extras]}"
}
