# Shared by the quick-start scripts: a fresh or refreshed virtual environment, and a running broker.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"

ensure_venv() {  # ensure_venv [test]   the runtime lock, or with "test" the test lock
  local lock="$ROOT/requirements/${1:-runtime}.txt" stamp
  if [ ! -f "$lock" ]; then
    echo "missing ${lock#"$ROOT"/}: scripts/lock writes it from pyproject.toml" >&2
    exit 1
  fi
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
  fi
  # The dependencies exactly as locked, every file checked against its hash; again only when
  # the lock changes. (Over an existing .venv: a package the lock dropped stays until
  # `rm -rf .venv`.)
  stamp="$VENV/.coderd-lock-$(basename "$lock" .txt)-$(sha256sum "$lock" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --require-hashes -r "$lock"
    rm -f "$VENV/.coderd-lock-$(basename "$lock" .txt)-"*
    touch "$stamp"
  fi
  # coderd itself, editable and without dependencies (the lock has them); again only when
  # pyproject.toml changes (entry points, package data).
  stamp="$VENV/.coderd-project-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --no-deps -e "$ROOT"
    rm -f "$VENV/.coderd-project-"*
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

# Headless Chromium for tests/test_console.py and promtool for tests/test_deploy.py, from
# Debian's packages, when missing and we may install (root, apt-get). Never fatal: without
# them those tests skip and say why. promtool is taken out of the prometheus package alone
# (to /usr/local/bin): installing the package would also start a Prometheus server.
ensure_chromium() {
  local tmp missing=""
  [ -x /usr/bin/chromium ] || missing="chromium"
  command -v promtool >/dev/null 2>&1 || missing="${missing:+$missing and }promtool"
  [ -z "$missing" ] && return 0
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
    echo "$missing missing, and installing needs root and apt-get: their tests will skip" >&2
    return 0
  fi
  tmp="$(mktemp -d)"
  if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium for the console test (apt-get install chromium, about 25 s)..." >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$tmp/log" 2>&1 ||
      { tail -n 3 "$tmp/log" >&2; echo "could not install chromium: tests/test_console.py will skip" >&2; }
  fi
  if ! command -v promtool >/dev/null 2>&1; then
    echo "installing promtool for the rules test (from apt-get download prometheus)..." >&2
    { (cd "$tmp" && apt-get download -qq prometheus >/dev/null 2>&1 ||
        { apt-get update -qq && apt-get download -qq prometheus >/dev/null 2>&1; }) &&
      dpkg-deb --fsys-tarfile "$tmp"/prometheus_*.deb | tar -xO ./usr/bin/promtool >"$tmp/promtool" &&
      install -m 0755 "$tmp/promtool" /usr/local/bin/promtool; } ||
      echo "could not install promtool: tests/test_deploy.py skips promtool check rules" >&2
  fi
  rm -rf "$tmp"
  return 0
}
