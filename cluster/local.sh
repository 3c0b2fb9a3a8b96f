#!/usr/bin/env bash
# A local multi-node Ray cluster for development: a head and 2 workers on this machine, each its
# own `ray start --block` process with its own ports, logical resources and custom resources, so
# placement by resources (decode tasks on CPU, model actors on GPU) can be tried without a cloud.
#
#   cluster/local.sh start     start head + 2 workers; prints RAY_ADDRESS (and the dashboard)
#   cluster/local.sh status    which of our nodes are alive, and `ray status` for our cluster
#   cluster/local.sh stop      stop exactly what `start` started (never `ray stop`, which would
#                              kill every Ray process of the user, other sessions included)
#
# Knobs (environment):
#   VOXRAY_LOCAL_DIR        state + Ray temp dir (default /tmp/vxl-$UID; keep it short: Ray's
#                           unix sockets live under it and socket paths are limited to 107 bytes)
#   VOXRAY_LOCAL_PORT       first port of a 600-port block (default: a free block found at start)
#   VOXRAY_LOCAL_HEAD_CPUS  logical CPUs of the head (default 1; 0 keeps all work off the head)
#   VOXRAY_LOCAL_CPUS       logical CPUs of each worker (default 2)
#   VOXRAY_LOCAL_GPUS       logical GPUs of worker 2, the "GPU group" (default 0). Setting 1 on a
#                           CPU-only machine advertises a GPU that does not exist: voxray's model
#                           actors then ask for num_gpus and land on worker 2 only (placement by
#                           resources), while torch/onnxruntime fall back to CPU inside them.
#   VOXRAY_LOCAL_DASHBOARD  1 (default) starts the dashboard on the head: `ray job submit`, the
#                           state API (ray list tasks/actors) and the web UI need it (~1 GiB); 0 saves it
#   RAY_AUTH_MODE           token | disabled (default: token when ~/.ray/auth_token exists); every
#                           node gets the same mode, clients must use it too
#   RAY                     the ray CLI to use (default: `ray` next to python3 on PATH)
#
# Custom resources, one name per node so jobs and tests can pin or check placement:
#   head       {"voxray_head": 1}
#   worker 1   {"voxray_cpu_group": 1, "voxray_worker_1": 1}   like KubeRay's cpu-workers group
#   worker 2   {"voxray_gpu_group": 1, "voxray_worker_2": 1}   like KubeRay's gpu-workers group
# Ray registers every node under this machine's address (it rewrites 127.0.0.1 to it), so the
# nodes talk to each other through the host's own interface; nothing leaves the machine. The
# dashboard listens on 127.0.0.1 only.
set -euo pipefail

DIR="${VOXRAY_LOCAL_DIR:-/tmp/vxl-$(id -u)}"
STATE="$DIR/cluster.env"
HEAD_CPUS="${VOXRAY_LOCAL_HEAD_CPUS:-1}"
WORKER_CPUS="${VOXRAY_LOCAL_CPUS:-2}"
GPUS="${VOXRAY_LOCAL_GPUS:-0}"
DASHBOARD="${VOXRAY_LOCAL_DASHBOARD:-1}"
RAY="${RAY:-ray}"
PYTHON="${PYTHON:-python3}"
BLOCK=600  # ports per run: node i uses BASE+200*i .. +199 (fixed ports at +0..+9, worker ports +100..+199)

die() { echo "cluster/local.sh: $*" >&2; exit 1; }

# Process groups recorded in the state file (one per `ray start --block`, which makes itself a
# process group leader and reaps its group when it exits).
pids() { [[ -f "$STATE" ]] && sed -n 's/^PID_[A-Z0-9_]*=//p' "$STATE" || true; }

alive() { kill -0 "$1" 2>/dev/null; }

# Processes (ours only) whose command line names our private temp dir: Ray's daemons and workers
# all carry it (--temp-dir / --session-dir / log paths), and no other Ray session uses it.
stragglers() {
  local me; me=$(id -u)
  for p in /proc/[0-9]*; do
    local pid=${p#/proc/}
    [[ "$pid" == "$$" ]] && continue
    [[ -O "$p" ]] || continue
    [[ "$(stat -c %u "$p" 2>/dev/null)" == "$me" ]] || continue
    if tr '\0' ' ' <"$p/cmdline" 2>/dev/null | grep -qF -- "$DIR/ray"; then echo "$pid"; fi
  done
}

free_block() {
  # First port of BLOCK consecutive ports none of which is bound on 127.0.0.1 / 0.0.0.0.
  "$PYTHON" - "$BLOCK" <<'EOF'
import random, socket, sys
size = int(sys.argv[1])
def free(port):
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False
rng = random.Random()
for _ in range(200):
    base = rng.randrange(20000, 30000 - size, 10)
    # probe the fixed ports of each node and a sample of worker ports
    probe = [base + 200 * i + k for i in range(3) for k in range(10)] + list(range(base + 100, base + size, 7))
    if all(free(p) for p in probe):
        print(base)
        sys.exit(0)
sys.exit("no free port block found")
EOF
}

wait_nodes() {
  # Wait until the head sees `want` alive nodes (up to 90 s), or the `ray start` PID exits.
  local want=$1 pid=$2
  "$PYTHON" - "$ADDRESS" "$want" "$pid" <<'EOF'
import os, sys, time
from ray._raylet import GcsClient  # no driver is started: nothing registers with the cluster
address, want, pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:  # the same token-auth rules as `ray start` / `ray status` (RAY_AUTH_MODE, ~/.ray/auth_token)
    from ray._private.authentication.authentication_token_setup import (
        ensure_token_if_auth_enabled, maybe_enable_token_auth_if_token_available,
    )
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    ensure_token_if_auth_enabled(None, create_token_if_missing=False)
except ImportError:
    pass
deadline = time.time() + 90
n = 0
while time.time() < deadline:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        sys.exit(f"ray start (pid {pid}) exited: see its log")
    try:
        nodes = GcsClient(address=address).get_all_node_info(timeout=5)
        n = sum(1 for info in nodes.values() if info.state == 0)  # ALIVE
        if n >= want:
            sys.exit(0)
    except Exception:
        pass
    time.sleep(0.5)
sys.exit(f"only {n} of {want} nodes came up in 90 s")
EOF
}

start_node() {
  # start_node NAME INDEX ARGS...: one `ray start --block`, detached in its own session.
  local name=$1 idx=$2; shift 2
  local b=$((BASE + 200 * idx))
  local log="$DIR/$name.log"
  setsid "$RAY" start --block --disable-usage-stats --temp-dir="$DIR/ray" \
    --node-manager-port=$((b + 1)) --object-manager-port=$((b + 2)) \
    --metrics-export-port=$((b + 3)) --dashboard-agent-listen-port=$((b + 4)) \
    --dashboard-agent-grpc-port=$((b + 5)) --runtime-env-agent-port=$((b + 6)) \
    --min-worker-port=$((b + 100)) --max-worker-port=$((b + 199)) \
    "$@" >>"$log" 2>&1 </dev/null &
  LAST_PID=$!
  echo "PID_${name^^}=$LAST_PID" >>"$STATE"
}

start_worker() {
  # start_worker NAME INDEX WANT ARGS...: start one worker and wait until the cluster has WANT
  # nodes. One at a time, with one retry: on a loaded machine a raylet can miss Ray's fixed 30 s
  # registration window, and starting workers together makes that likelier.
  local name=$1 idx=$2 want=$3; shift 3
  for attempt in 1 2; do
    start_node "$name" "$idx" "$@"
    if wait_nodes "$want" "$LAST_PID"; then return 0; fi
    kill -TERM -- "-$LAST_PID" 2>/dev/null || true
    sleep 2
    kill -KILL -- "-$LAST_PID" 2>/dev/null || true
    sed -i "/=$LAST_PID\$/d" "$STATE"
    [[ $attempt == 1 ]] && echo "cluster/local.sh: $name did not join; retrying once" >&2
  done
  return 1
}

cmd_start() {
  if [[ -f "$STATE" ]]; then
    for p in $(pids); do alive "$p" && die "already running (state in $STATE); run: cluster/local.sh stop"; done
    rm -f "$STATE"
  fi
  command -v "$RAY" >/dev/null || die "no '$RAY' on PATH: activate the venv (. .venv/bin/activate) or set RAY=..."
  mkdir -p "$DIR"
  rm -f "$DIR"/*.log
  # Token auth: `ray start --head` turns it on by itself when a token exists, but a joining
  # `ray start --address` does not, so decide once and give every node the same mode.
  if [[ -z "${RAY_AUTH_MODE:-}" ]]; then
    if [[ -n "${RAY_AUTH_TOKEN:-}" || -s "${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}" ]]; then
      export RAY_AUTH_MODE=token
    else
      export RAY_AUTH_MODE=disabled
    fi
  fi
  BASE="${VOXRAY_LOCAL_PORT:-$(free_block)}"
  ADDRESS="127.0.0.1:$BASE"
  DASH_PORT=$((BASE + 8))
  {
    echo "BASE=$BASE"
    echo "ADDRESS=$ADDRESS"
    echo "AUTH_MODE=$RAY_AUTH_MODE"
    [[ "$DASHBOARD" == 1 ]] && echo "DASHBOARD=http://127.0.0.1:$DASH_PORT"
  } >"$STATE"
  local dash=(--include-dashboard=false)
  [[ "$DASHBOARD" == 1 ]] && dash=(--include-dashboard=true --dashboard-host=127.0.0.1 --dashboard-port="$DASH_PORT")
  start_node head 0 --head --port="$BASE" --ray-client-server-port=$((BASE + 7)) "${dash[@]}" \
    --num-cpus="$HEAD_CPUS" --num-gpus=0 --resources='{"voxray_head": 1}'
  wait_nodes 1 "$LAST_PID" || { tail -n 30 "$DIR/head.log" >&2; cmd_stop >&2; die "the head did not start"; }
  start_worker worker1 1 2 --address="$ADDRESS" --num-cpus="$WORKER_CPUS" --num-gpus=0 \
    --resources='{"voxray_cpu_group": 1, "voxray_worker_1": 1}' \
    || { tail -n 30 "$DIR/worker1.log" >&2; cmd_stop >&2; die "worker 1 did not join"; }
  start_worker worker2 2 3 --address="$ADDRESS" --num-cpus="$WORKER_CPUS" --num-gpus="$GPUS" \
    --resources='{"voxray_gpu_group": 1, "voxray_worker_2": 1}' \
    || { tail -n 30 "$DIR/worker2.log" >&2; cmd_stop >&2; die "worker 2 did not join"; }
  echo "Ray cluster up: head + 2 workers (state and logs in $DIR)"
  echo "RAY_ADDRESS=$ADDRESS"
  echo "RAY_AUTH_MODE=$RAY_AUTH_MODE   (clients: export the same)"
  [[ "$DASHBOARD" == 1 ]] && echo "DASHBOARD=http://127.0.0.1:$DASH_PORT   (ray job submit --address http://127.0.0.1:$DASH_PORT -- voxray run jobs/X.yaml)"
  echo "use it: RAY_ADDRESS=$ADDRESS voxray run jobs/transcribe.yaml   (or ray.init(address=\"$ADDRESS\"))"
}

cmd_stop() {
  if [[ ! -f "$STATE" ]]; then
    echo "not running (no $STATE)"
    return 0
  fi
  # Workers first, then the head: SIGTERM each `ray start --block` group, then wait.
  local order; order=$(pids | tac)
  for p in $order; do alive "$p" && kill -TERM -- "-$p" 2>/dev/null || true; done
  for _ in $(seq 1 40); do
    local left=0
    for p in $order; do alive "$p" && left=1; done
    [[ $left == 0 ]] && break
    sleep 0.25
  done
  for p in $order; do alive "$p" && kill -KILL -- "-$p" 2>/dev/null || true; done
  # Anything of ours that left its process group (Ray workers can), found by our private temp dir.
  local rest; rest=$(stragglers)
  if [[ -n "$rest" ]]; then
    kill -TERM $rest 2>/dev/null || true
    sleep 2
    rest=$(stragglers)
    [[ -n "$rest" ]] && kill -KILL $rest 2>/dev/null || true
  fi
  rm -f "$STATE"
  echo "stopped (logs kept in $DIR)"
}

cmd_status() {
  if [[ ! -f "$STATE" ]]; then
    echo "not running"
    return 1
  fi
  # shellcheck disable=SC1090
  source "$STATE"
  local up=0 n=0
  while IFS='=' read -r key pid; do
    [[ $key == PID_* ]] || continue
    n=$((n + 1))
    if alive "$pid"; then up=$((up + 1)); echo "${key#PID_}: running (pid $pid)"; else echo "${key#PID_}: dead"; fi
  done <"$STATE"
  echo "RAY_ADDRESS=$ADDRESS"
  [[ -n "${DASHBOARD:-}" ]] && echo "DASHBOARD=$DASHBOARD"
  RAY_AUTH_MODE="$AUTH_MODE" "$RAY" status --address="$ADDRESS" 2>/dev/null || true
  [[ $up == "$n" ]]
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: cluster/local.sh start|stop|status" >&2; exit 2 ;;
esac
