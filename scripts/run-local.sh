#!/usr/bin/env bash
# Install and run the whole gateway on this machine: Redis (with AOF), the web
# front-end and one Celery worker pool per provider family, under honcho.
# Needs no upstream key: model local/testcard renders images in the worker.
#
#   PORT=8080                        web port
#   IMAGEGATE_LOCAL_REDIS_PORT=6390  port of the Redis this script starts
#   IMAGEGATE_VENV=.venv             virtualenv to install into
# Any other IMAGEGATE_* setting and upstream key (OPENAI_API_KEY, ...) is passed on.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

export PORT="${PORT:-8080}"
REDIS_PORT="${IMAGEGATE_LOCAL_REDIS_PORT:-6390}"
RUN_DIR="$PWD/.run"

ensure_system_packages
ensure_venv ""
export PATH="$PWD/$VENV/bin:$PATH"

mkdir -p "$RUN_DIR/redis"
if ! redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1; then
  say "starting redis-server on 127.0.0.1:$REDIS_PORT (AOF on, data in .run/redis)"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --appendonly yes --save "" \
    --maxmemory-policy noeviction --dir "$RUN_DIR/redis" \
    --daemonize yes --pidfile "$RUN_DIR/redis.pid" --logfile "$RUN_DIR/redis.log"
  for _ in $(seq 50); do redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break; sleep 0.1; done
  STARTED_REDIS=1
fi
cleanup() {
  if [ "${STARTED_REDIS:-}" = 1 ]; then redis-cli -p "$REDIS_PORT" shutdown >/dev/null 2>&1 || true; fi
}
trap cleanup EXIT

export IMAGEGATE_REDIS_URL="${IMAGEGATE_REDIS_URL:-redis://127.0.0.1:$REDIS_PORT/0}"
export IMAGEGATE_STORAGE_DIR="${IMAGEGATE_STORAGE_DIR:-$PWD/var/images}"
imagegate check

KEY_FILE="$RUN_DIR/demo-key"
if [ ! -s "$KEY_FILE" ]; then
  imagegate keys create --name demo --tier internal --balance unlimited --json \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])' > "$KEY_FILE"
  chmod 600 "$KEY_FILE"
fi
KEY="$(cat "$KEY_FILE")"

cat <<MSG

  imagegate is starting on http://127.0.0.1:$PORT   (Ctrl-C stops everything)

  Demo API key (kept in .run/demo-key): $KEY

  Playground: http://127.0.0.1:$PORT/playground   (sign in with the key)

  python3 - <<'PY'
  from openai import OpenAI
  client = OpenAI(api_key="$KEY", base_url="http://127.0.0.1:$PORT/v1")
  r = client.images.generate(model="local/testcard", prompt="a red fox", size="512x512", n=2)
  print(r.data[0].url)
  PY

  curl -s http://127.0.0.1:$PORT/v1/models -H "Authorization: Bearer $KEY"

MSG
honcho start -f Procfile -p "$PORT"
