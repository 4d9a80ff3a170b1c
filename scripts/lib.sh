# Shared by the quick-start scripts: a fresh or refreshed virtual environment, and a running broker.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

ensure_venv() {  # ensure_venv EXTRAS   e.g. "" or "test"
  local extras="${1:-}" spec="$ROOT" stamp
  [ -n "$extras" ] && spec="$ROOT[$extras]"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  # Reinstall only when the project's declared dependencies change.
  stamp="$VENV/.coderd-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)-${extras:-base}"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q -e "$spec"
    touch "$stamp"
  fi
}

broker_listening() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }

ensure_rabbitmq() {
  broker_listening && return 0
  if ! command -v rabbitmq-server >/dev/null 2>&1; then
    echo "RabbitMQ is not installed. On Debian/Ubuntu: sudo apt-get update && sudo apt-get install -y rabbitmq-server" >&2
    echo "(or point CODERD_AMQP_URL at a running broker), then run this again." >&2
    exit 1
  fi
  echo "starting RabbitMQ (rabbitmq-server -detached)..." >&2
  rabbitmq-server -detached
  rabbitmqctl await_startup >/dev/null
}
