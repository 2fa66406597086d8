#!/usr/bin/env bash
# Start the MLflow tracking server that searches log to (used by cluster.yaml, cluster.local.yaml
# and the tests). Binds to 127.0.0.1 unless told otherwise; artifacts are served by the server,
# so clients on other nodes need only its URL.
#
#   mlflow/server.sh                                   # 127.0.0.1:5000, sqlite store in mlflow/store/
#   mlflow/server.sh --host 10.0.1.5 --port 5000       # a cluster head's private address
#   MLFLOW_BACKEND_URI=postgresql://user@db/mlflow mlflow/server.sh --host 10.0.1.5
#   mlflow/server.sh --daemon --pidfile /tmp/mlflow.pid --log /tmp/mlflow.log
#   mlflow/server.sh --stop --pidfile /tmp/mlflow.pid   # stops that server and its workers
#   mlflow/server.sh --workers 1                       # request workers (default: MLflow's 4)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
host=127.0.0.1
port=5000
daemon=0
stop=0
pidfile=""
logfile=""
workers=""
while [ $# -gt 0 ]; do
  case "$1" in
    --host) host=$2; shift 2 ;;
    --port) port=$2; shift 2 ;;
    --daemon) daemon=1; shift ;;
    --stop) stop=1; shift ;;
    --pidfile) pidfile=$2; shift 2 ;;
    --log) logfile=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "mlflow/server.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

if [ "$stop" = 1 ]; then
  [ -n "$pidfile" ] && [ -f "$pidfile" ] || { echo "mlflow/server.sh: --stop needs --pidfile FILE" >&2; exit 2; }
  pid=$(cat "$pidfile")
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true  # the whole process group
  # Done when the whole group is gone: request workers can outlive the server process by a moment.
  gone() { ! kill -0 -- "-$pid" 2>/dev/null && ! kill -0 "$pid" 2>/dev/null; }
  for _ in $(seq 1 50); do gone && { rm -f "$pidfile"; exit 0; }; sleep 0.2; done
  kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 1 25); do gone && break; sleep 0.2; done
  rm -f "$pidfile"; exit 0
fi

backend=${MLFLOW_BACKEND_URI:-sqlite:///$here/store/mlflow.db}
artifacts=${MLFLOW_ARTIFACTS_DESTINATION:-$here/store/artifacts}
mlflow_bin=${MLFLOW_BIN:-$here/../.venv/bin/mlflow}
[ -x "$mlflow_bin" ] || mlflow_bin=$(command -v mlflow) ||
  { echo "mlflow/server.sh: no mlflow executable in .venv/bin or on PATH; set MLFLOW_BIN" >&2; exit 1; }
mkdir -p "$here/store" "$artifacts"

# The Host headers the server accepts: its own address (and loopback for port-forwarded UIs).
allowed="$host:$port,localhost:$port,127.0.0.1:$port"
cmd=("$mlflow_bin" server --backend-store-uri "$backend" --artifacts-destination "$artifacts"
     --serve-artifacts --host "$host" --port "$port" --allowed-hosts "$allowed")
[ -n "$workers" ] && cmd+=(--workers "$workers")

if [ "$daemon" = 1 ]; then
  # Its own session and process group, so --stop can take down the server's workers too.
  setsid nohup "${cmd[@]}" > "${logfile:-$here/store/server.log}" 2>&1 < /dev/null &
  pid=$!
  [ -n "$pidfile" ] && echo "$pid" > "$pidfile"
  # Ready when /health answers; fail loudly if it never does.
  for _ in $(seq 1 60); do
    if curl -sf "http://$host:$port/health" > /dev/null 2>&1; then
      echo "MLflow tracking server on http://$host:$port (pid $pid)"; exit 0
    fi
    kill -0 "$pid" 2>/dev/null || { echo "mlflow/server.sh: server exited; see ${logfile:-$here/store/server.log}" >&2; exit 1; }
    sleep 1
  done
  echo "mlflow/server.sh: no answer on http://$host:$port/health after 60 s" >&2; exit 1
fi
exec "${cmd[@]}"
