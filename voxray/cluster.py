"""Start or join a Ray cluster, plan elastic actor pools from options, and keep Ray's noise to Ray.

- :func:`init_ray` joins ``$RAY_ADDRESS`` / ``--address`` or starts a local cluster. A local cluster
  voxray starts is watched by a small process outside the driver's process group: if the driver
  dies (even by SIGKILL), the watchdog kills that cluster's processes, so none is left behind.
- :func:`plan_pool` turns :class:`~voxray.config.ResourceOptions` into an elastic pool: the device
  (``auto`` reads the GPUs the cluster has *and* the GPU capacity its autoscaler declares), GPUs per
  actor, min/max actors. A GPU job asks for GPUs whether or not they exist yet; only a cluster
  that can never hold the pool (a local one voxray started, or one whose declared capacity is too
  small) fails at once (:func:`check_capacity`).
- Workers' stdout/stderr reach the driver filtered: only voxray's own records (WARNING and up,
  tagged by :func:`configure_worker_logging`) are printed; Ray's lines stay in Ray's log files.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Literal

from voxray.config import RayOptions, ResourceOptions
from voxray.errors import VoxrayError

logger = logging.getLogger("voxray.cluster")

WORKER_LOG_TAG = "[voxray]"  # marks voxray's records in workers' stderr, for the driver's filter


class DeviceUnavailableError(VoxrayError):
    """A GPU actor found no CUDA device: voxray never falls back to CPU silently."""

    status = 503
    kind = "no_device"


class CapacityError(VoxrayError):
    """The cluster cannot hold the actors a job needs (now, or within the wait)."""

    status = 503
    kind = "no_capacity"


# ---------------------------------------------------------------- what the cluster has
@dataclass(frozen=True)
class ClusterView:
    """Resources now, the capacity the autoscaler declares (None: nothing declared), and who started it."""

    cpus: float
    gpus: float
    declared: dict[str, float] | None = None
    local: bool = False

    @property
    def max_gpus(self) -> float | None:
        return None if self.declared is None else float(self.declared.get("GPU", 0))

    @property
    def max_cpus(self) -> float | None:
        return None if self.declared is None else float(self.declared.get("CPU", 0))

    def describe(self) -> str:
        has = f"CPU {self.cpus:g}, GPU {self.gpus:g}"
        if self.local:
            return f"{has} (a local cluster started by voxray: it cannot grow)"
        if self.declared is None:
            return f"{has} (no autoscaler capacity declared)"
        return f"{has}; its autoscaler can grow it to CPU {self.max_cpus:g}, GPU {self.max_gpus:g}"


def declared_capacity() -> dict[str, float] | None:
    """The most the cluster's autoscaler can provide (KubeRay / cluster launcher), or None.

    Read from the cluster config the autoscaler publishes in the GCS, the same source Ray Data and
    Ray Train size themselves from. Private Ray API, hence the broad guard: None means unknown.
    """
    try:
        import ray._private.state

        caps = ray._private.state.state.get_max_resources_from_cluster_config()
    except Exception:
        return None
    return {k: float(v) for k, v in caps.items()} if caps else None


def cluster_view(local: bool) -> ClusterView:
    import ray

    res = ray.cluster_resources()
    return ClusterView(float(res.get("CPU", 0)), float(res.get("GPU", 0)), None if local else declared_capacity(),
                       local)


# ---------------------------------------------------------------- pool planning
@dataclass(frozen=True)
class PoolPlan:
    """An elastic pool of model actors: ``min_actors``..``max_actors`` (None: as many as fit)."""

    device: Literal["cpu", "gpu"]
    min_actors: int
    max_actors: int | None
    num_cpus: float
    num_gpus: float
    threads: int
    wait_s: float

    @property
    def uses_gpu(self) -> bool:
        return self.device == "gpu"

    @property
    def actors(self) -> int:
        """The pool's planned size (its maximum when bounded)."""
        return self.max_actors or self.min_actors

    def ask(self) -> str:
        each = f"{self.num_gpus:g} GPU + {self.num_cpus:g} CPU" if self.uses_gpu else f"{self.num_cpus:g} CPU"
        n = self.min_actors
        return f"{n} model actor{'s' if n > 1 else ''} with {each} each"

    def as_dict(self) -> dict[str, Any]:
        return {"device": self.device, "min_actors": self.min_actors, "max_actors": self.max_actors,
                "cpus_per_actor": self.num_cpus, "gpus_per_actor": self.num_gpus, "threads": self.threads}


def resolve_device(options: ResourceOptions, view: ClusterView) -> Literal["cpu", "gpu"]:
    """``auto``: GPU when the cluster has GPUs now or its autoscaler declares GPU capacity
    (or ``gpus_per_actor`` > 0 asks for them), else CPU."""
    if options.device != "auto":
        return options.device
    if options.gpus_per_actor is not None:
        return "gpu" if options.gpus_per_actor > 0 else "cpu"
    return "gpu" if view.gpus > 0 or (view.max_gpus or 0) > 0 else "cpu"


def plan_pool(
    options: ResourceOptions,
    view: ClusterView,
    default_gpus_per_actor: float = 1.0,
    cpu_actor_per_core: bool = False,
    rows: int | None = None,
) -> PoolPlan:
    """Size the elastic pool from options and the cluster (present and declared).

    GPU: ``gpus_per_actor`` each (default 1; TTS passes 0.25), up to what the GPUs present or
    declared allow, unbounded when the cluster declares nothing (actors start as GPU nodes join).
    CPU: one actor per ``cpus_per_actor`` CPUs beyond the first (decode tasks need a core), or per
    core for ``cpu_actor_per_core`` (TTS: no decode stage); CPU actors share the cores as threads.
    ``rows`` caps the pool (no idle actors for a small input).
    """
    device = resolve_device(options, view)
    gpa = 0.0
    if device == "gpu":
        gpa = options.gpus_per_actor if options.gpus_per_actor else default_gpus_per_actor
    cpa = options.cpus_per_actor
    if options.actors is not None:
        lo = hi = options.actors
    else:
        lo = options.min_actors or 1
        if options.max_actors is not None:
            hi: int | None = options.max_actors
        elif device == "gpu":
            gpus = max(view.gpus, view.max_gpus or 0)
            hi = max(lo, math.floor(gpus / gpa + 1e-9)) if view.local or view.max_gpus is not None else None
        else:
            cpus = max(view.cpus, view.max_cpus or 0)
            usable = cpus if cpu_actor_per_core else cpus - 1
            hi = max(lo, int(usable // max(cpa, 1.0)))
    if rows is not None:
        hi = rows if hi is None else min(hi, rows)
        lo = min(lo, max(1, rows))
        hi = max(hi, lo)
    if options.threads_per_actor:
        threads = options.threads_per_actor
    elif device == "gpu":
        threads = max(1, round(cpa))
    else:
        # CPU inference: the actors share the machine's cores (decode tasks are light next to the
        # model), capped where intra-op scaling flattens out.
        threads = max(1, min(8, int(max(view.cpus, 1) // max(hi or lo, 1))))
    wait = 0.0 if view.local else options.wait_for_actors_s
    return PoolPlan(device, lo, hi, cpa, gpa, threads, wait)


def check_capacity(plan: PoolPlan, view: ClusterView) -> None:
    """Fail at once when the cluster can never hold ``min_actors`` (else the job waits for them)."""
    need_gpu = plan.num_gpus * plan.min_actors
    need_cpu = plan.num_cpus * plan.min_actors
    can_gpu = view.gpus if view.local else max(view.gpus, view.max_gpus) if view.max_gpus is not None else None
    can_cpu = view.cpus if view.local else max(view.cpus, view.max_cpus) if view.max_cpus is not None else None
    short = []
    if plan.uses_gpu and can_gpu is not None and can_gpu + 1e-9 < need_gpu:
        short.append(f"{need_gpu:g} GPU")
    if can_cpu is not None and can_cpu + 1e-9 < need_cpu:
        short.append(f"{need_cpu:g} CPU")
    if short:
        fix = "run with --device cpu, or join a cluster with GPUs (--address)" if plan.uses_gpu and not view.gpus \
            else "lower --min-actors / --cpus-per-actor, or join a bigger cluster (--address)"
        raise CapacityError(f"the job needs {plan.ask()} ({' and '.join(short)}) but the cluster has "
                            f"{view.describe()}: {fix}")


@dataclass(frozen=True)
class ActorPlan:
    """Resolved placement of model actors (the fixed-size view of a :class:`PoolPlan`)."""

    actors: int
    num_cpus: float
    num_gpus: float
    threads: int

    @property
    def uses_gpu(self) -> bool:
        return self.num_gpus > 0


def plan_actors(options: ResourceOptions, cluster: dict[str, float] | None = None) -> ActorPlan:
    """Size a pool from given resources (``ray.cluster_resources()`` by default); see :func:`plan_pool`."""
    if cluster is None:
        import ray

        cluster = ray.cluster_resources()
    view = ClusterView(float(cluster.get("CPU", 1)), float(cluster.get("GPU", 0)), local=True)
    plan = plan_pool(options, view)
    return ActorPlan(plan.actors, plan.num_cpus, plan.num_gpus, plan.threads)


def local_gpus() -> int:
    """GPUs a local Ray cluster started here would see (Ray's own detection; 0 when unsure)."""
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        return int(get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators() or 0)
    except Exception:
        return 0


def precheck_local(resources: ResourceOptions, options: RayOptions) -> None:
    """Before voxray starts a local cluster: a GPU job on a machine without GPUs fails at once
    (nothing could ever add them), before paying for Ray's start."""
    import ray

    if ray.is_initialized() or options.address or os.environ.get("RAY_ADDRESS"):
        return
    wants_gpu = resources.device == "gpu" or (resources.device == "auto" and (resources.gpus_per_actor or 0) > 0)
    if wants_gpu and local_gpus() == 0:
        raise CapacityError(
            "the job asks for GPUs (--device gpu) but this machine has none, and the local Ray cluster voxray "
            "would start here cannot grow: run with --device cpu, or join a cluster with GPUs (--address)"
        )


def remote_retry_args(task_retries: int, actor_restarts: int | None = None) -> dict[str, int]:
    """Explicit, bounded Ray retry options for one stage (Ray Data's defaults retry forever)."""
    if actor_restarts is None:
        return {"max_retries": task_retries}
    return {"max_restarts": actor_restarts, "max_task_retries": task_retries}


# ---------------------------------------------------------------- start / join / stop
_watchdog: subprocess.Popen | None = None
_started_local = False


def init_ray(options: RayOptions | None = None) -> bool:
    """Join ``options.address`` / ``$RAY_ADDRESS``, else start a local cluster (watched, see module doc).

    Returns True when this call started or joined Ray (so the caller should shut it down, with
    :func:`shutdown_ray`); False when Ray was already initialised by the caller.
    """
    import ray

    global _started_local
    if ray.is_initialized():
        return False
    options = options or RayOptions()
    address = options.address or os.environ.get("RAY_ADDRESS")
    _started_local = False
    kwargs: dict[str, Any] = {"log_to_driver": True, "logging_level": logging.WARNING}
    if address:
        ray.init(address=address, **kwargs)
        logger.info("joined Ray cluster at %s", address)
    else:
        ray.init(
            num_cpus=options.num_cpus,
            include_dashboard=options.include_dashboard,
            _temp_dir=options.temp_dir,
            **kwargs,
        )
        logger.debug("started a local Ray cluster: %s", ray.cluster_resources())
        _started_local = True
        _start_watchdog()
    session_dir()  # remembered: the console keeps Ray's filtered lines there after the job
    _forward_voxray_worker_logs()
    return True


def started_locally() -> bool:
    """True when this process started the Ray cluster it is connected to (nothing can add nodes)."""
    return _started_local


def shutdown_ray() -> None:
    """Disconnect (stopping a local cluster this process started) and retire its watchdog."""
    import ray

    global _watchdog, _started_local
    ray.shutdown()
    _started_local = False
    if _watchdog is not None:
        if _watchdog.poll() is None:
            _watchdog.send_signal(signal.SIGUSR1)  # reap anything Ray's own shutdown left, then exit
            try:
                _watchdog.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _watchdog.kill()
        _watchdog = None


_last_session: str | None = None


def session_dir() -> str | None:
    """The Ray session directory of this driver (the last one, after a shutdown), for its logs."""
    global _last_session
    try:
        import ray

        _last_session = ray._private.worker._global_node.get_session_dir_path()
    except Exception:
        pass
    return _last_session


def _start_watchdog() -> None:
    global _watchdog
    session = session_dir()
    if not session or not os.path.isdir("/proc"):
        return
    _watchdog = subprocess.Popen(
        [sys.executable, "-c", "from voxray.cluster import _watch_main; _watch_main()", str(os.getpid()), session],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True,  # outlives a kill of the driver's process group
    )


# ---------------------------------------------------------------- the watchdog process (stdlib only)
def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return int(fh.read().rsplit(b")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _processes() -> dict[int, tuple[int, bytes]]:
    """pid -> (parent pid, command line) for every visible process."""
    out = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                ppid = int(fh.read().rsplit(b")", 1)[1].split()[1])
            with open(f"/proc/{name}/cmdline", "rb") as fh:
                cmd = fh.read()
        except (OSError, IndexError, ValueError):
            continue
        out[int(name)] = (ppid, cmd)
    return out


def session_processes(session: str) -> dict[int, int]:
    """pid -> start time of the processes of one Ray session: those started with its session
    directory on their command line (GCS, raylet, monitors) and all their descendants (agents, workers)."""
    procs = _processes()
    marker = session.encode()
    roots = {pid for pid, (_, cmd) in procs.items() if marker in cmd}
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    found, stack = set(), list(roots)
    while stack:
        pid = stack.pop()
        if pid in found:
            continue
        found.add(pid)
        stack += children.get(pid, [])
    found.discard(os.getpid())
    return {pid: st for pid in found if (st := _start_time(pid)) is not None}


def _kill_all(known: dict[int, int], session: str) -> None:
    for _ in range(5):
        targets = {p: s for p, s in known.items() if _start_time(p) == s}
        targets.update(session_processes(session))
        if not targets:
            return
        for pid in targets:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        known = {}
        time.sleep(0.3)


def _watch_main() -> None:
    """``python -c 'from voxray.cluster import _watch_main; _watch_main()' DRIVER_PID SESSION_DIR``."""
    driver, session = int(sys.argv[1]), sys.argv[2]
    born = _start_time(driver)
    reap = {"now": False}
    signal.signal(signal.SIGUSR1, lambda *_: reap.update(now=True))
    known: dict[int, int] = {}
    while not reap["now"] and born is not None and _start_time(driver) == born:
        known.update(session_processes(session))
        known = {p: s for p, s in known.items() if _start_time(p) == s}
        time.sleep(0.5)
    _kill_all(known, session)


# ---------------------------------------------------------------- logs: voxray's reach the driver, Ray's stay in files
def configure_worker_logging() -> None:
    """In a Ray worker: voxray's WARNING+ records go to stderr tagged, so the driver prints them."""
    log = logging.getLogger("voxray")
    if any(getattr(h, "_voxray_worker", False) for h in log.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{WORKER_LOG_TAG} %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    handler._voxray_worker = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(min(log.level or logging.WARNING, logging.WARNING))


def _forward_voxray_worker_logs() -> None:
    """Replace Ray's print-every-worker-line handler with one that prints only voxray's records."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher
    except Exception:
        return

    def forward(data: dict[str, Any]) -> None:
        who = data.get("actor_name") or data.get("task_name") or "worker"
        for line in data.get("lines", []):
            if WORKER_LOG_TAG in line:
                message = line.split(WORKER_LOG_TAG, 1)[1].strip()
                print(f"({who} pid={data.get('pid')}) {message}", file=sys.stderr, flush=True)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.remove_handler("voxray_logs")
    dispatcher.add_handler("voxray_logs", forward)


# Ray's console lines users should not have to read (each is still in Ray's session log files).
RAY_NOISE = (
    r"Token authentication is enabled",
    r"core_worker\.cc:\d+: .*max_restarts > 0",
    r"constructor arguments in the object store",
    r"Progress bars disabled",
    r"Started a local Ray instance",
    r"Connecting to existing Ray cluster",
    r"Connected to Ray cluster",
    r"streaming_executor\.py:\d+ -- ",
    r"Specifying both num_cpus and num_gpus",
    r"ray_remote_args. is deprecated",
    r"RayDeprecationWarning",
    r"Overwriting previous Ray address",
    r"Registered dataset logger",
    r"Execution plan of Dataset",
    r"Usage stats collection",
    r"Tip: ",
    r"Actor Pool configuration of the",
    r"The minimum number of concurrent actors for",
    r"warnings\.warn\(",
)
