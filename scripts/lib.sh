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
  "$PYTHON" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || missing+=(python3 python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]} from Debian's packages"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
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
