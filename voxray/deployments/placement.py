"""Fit replicas to the cluster, or fail fast saying why they cannot be placed.

Ray Serve never fails an unschedulable deployment: it logs every 30 s and waits forever. voxray
checks first (the minimum replicas of every deployment bin-packed onto the nodes' resources),
fits fractional CPUs when ``voxray serve`` started the cluster itself, and, once deployed, waits
a bounded time for the replicas to run before failing with one message naming each deployment,
what it asked for and what the cluster has.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from voxray.deployments.config import (
    DEFAULT_INGRESS_CPUS,
    DEFAULT_MODEL_CPUS,
    DEPLOYMENT_NAMES,
    ServeAppConfig,
)
from voxray.errors import VoxrayError

logger = logging.getLogger("voxray.deployments")

# Relative CPU weight of an auto-sized ingress replica vs a model replica when fitting.
INGRESS_WEIGHT = 0.5
CPU_STEP = 0.01  # fitted shares are rounded down to this


class UnschedulableError(VoxrayError):
    """The minimum replicas cannot be placed on the cluster (a config or cluster-size problem)."""

    status = 503
    kind = "unschedulable"


class DeployFailedError(VoxrayError):
    """A deployment's replicas failed to start (e.g. a model that cannot be loaded)."""

    status = 500
    kind = "deploy_failed"


_EXC_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w+(?:Error|Exception)): (.+)$")


def failure_summary(message: str) -> str:
    """The last ``SomeError: message`` line of a Serve status message (which carries a whole
    traceback), so the user gets the cause in one line."""
    found = [m for m in (_EXC_LINE.match(line) for line in (message or "").splitlines()) if m]
    if found:
        name, text = found[-1].groups()
        return f"{name}: {text.strip()}"
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    return lines[0] if lines else "no reason given"


@dataclass(frozen=True)
class Demand:
    """``replicas`` replicas of ``deployment``, each asking ``resources``."""

    deployment: str
    replicas: int
    resources: dict[str, float]

    def describe(self) -> str:
        return f"{self.deployment} {self.replicas} x {fmt_resources(self.resources)}"


def fmt_resources(res: dict[str, float]) -> str:
    keys = [k for k in ("CPU", "GPU") if k in res] + sorted(k for k in res if k not in ("CPU", "GPU"))
    return "{" + ", ".join(f"{k}: {res[k]:g}" for k in keys) + "}"


def _replica_groups(config: ServeAppConfig, realtime: bool | None = None) -> dict[str, Any]:
    """Config key -> options of every enabled model-replica group (the HTTP app's model deployments,
    and the realtime app's unless ``realtime`` is False)."""
    groups: dict[str, Any] = {f"{kind}_deployment": dep for kind, dep in config.model_deployments().items()}
    if config.realtime_enabled if realtime is None else realtime:
        groups["realtime_deployment"] = config.realtime_deployment
    return groups


def demands(config: ServeAppConfig, realtime: bool | None = None) -> list[Demand]:
    """What the minimum replicas ask of the cluster, ingress included (and the realtime
    application's, when enabled, unless ``realtime`` is False)."""
    out = [
        Demand(DEPLOYMENT_NAMES[key.removesuffix("_deployment")], dep.autoscaling.start_replicas,
               dep.resources(DEFAULT_MODEL_CPUS))
        for key, dep in _replica_groups(config, realtime).items()
    ]
    out.append(Demand(DEPLOYMENT_NAMES["ingress"], 1, config.ingress.resources(DEFAULT_INGRESS_CPUS)))
    return out


def fit_to_cluster(config: ServeAppConfig, cpus: float) -> ServeAppConfig:
    """Give every replica whose ``num_cpus`` is unset a share of ``cpus`` so the minimum replicas
    fit (pinned values are kept), and cap ``max_replicas`` at what the remaining CPUs can hold."""
    data = config.model_dump()
    groups = _replica_groups(config)
    pinned = sum(
        d.num_cpus * d.autoscaling.start_replicas for d in groups.values() if d.num_cpus is not None
    ) + (config.ingress.num_cpus or 0.0)
    weights = sum(d.autoscaling.start_replicas for d in groups.values() if d.num_cpus is None)
    weights += INGRESS_WEIGHT if config.ingress.num_cpus is None else 0.0
    budget = cpus - pinned
    if weights == 0 or budget <= 0:
        return config  # nothing to fit, or already too big: the placement check says so
    share = min(1.0, math.floor(budget / weights / CPU_STEP) * CPU_STEP)
    if share <= 0:
        return config
    if config.ingress.num_cpus is None:
        data["ingress"]["num_cpus"] = round(share * INGRESS_WEIGHT, 2)
    used = pinned + sum(share * d.autoscaling.start_replicas for d in groups.values() if d.num_cpus is None)
    used += share * INGRESS_WEIGHT if config.ingress.num_cpus is None else 0.0
    for key, dep in groups.items():
        cpu = dep.num_cpus if dep.num_cpus is not None else share
        if dep.num_cpus is None:
            data[key]["num_cpus"] = share
        if cpu > 0:  # more replicas than the spare CPUs hold would only wait to be scheduled
            spare = int((cpus - used + 1e-9) // cpu)
            auto = data[key]["autoscaling"]
            auto["max_replicas"] = max(dep.autoscaling.start_replicas, min(auto["max_replicas"],
                                                                           dep.autoscaling.start_replicas + spare))
    fitted = ServeAppConfig(**data)
    logger.info("fitted replicas to %g CPUs: %s", cpus, "; ".join(d.describe() for d in demands(fitted)))
    return fitted


def _alive_nodes(ray: Any) -> list[dict[str, float]]:
    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def _pack(bundles: list[dict[str, float]], nodes: list[dict[str, float]]) -> bool:
    """First-fit decreasing: can every bundle be placed on some node's total resources?"""
    free = [dict(n) for n in nodes]
    for bundle in sorted(bundles, key=lambda b: (-b.get("GPU", 0), -b.get("CPU", 0))):
        for node in free:
            if all(node.get(k, 0.0) + 1e-9 >= v for k, v in bundle.items() if v > 0):
                for k, v in bundle.items():
                    node[k] = node.get(k, 0.0) - v
                break
        else:
            return False
    return True


def cluster_summary(nodes: list[dict[str, float]], available: dict[str, float] | None = None) -> str:
    total: dict[str, float] = {}
    for n in nodes:
        for k in ("CPU", "GPU"):
            if n.get(k):
                total[k] = total.get(k, 0.0) + n[k]
    text = f"the cluster has {fmt_resources(total or {'CPU': 0})} on {len(nodes)} node(s)"
    if len(nodes) > 1:
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        text += f" (largest {fmt_resources({k: largest[k] for k in ('CPU', 'GPU') if largest.get(k)})})"
    if available is not None:
        free = {k: available[k] for k in ("CPU", "GPU") if available.get(k)}
        text += f", {fmt_resources(free or {'CPU': 0})} free now"
    return text


def unschedulable_message(config: ServeAppConfig, nodes: list[dict[str, float]], why: str,
                          available: dict[str, float] | None = None, realtime: bool | None = None) -> str:
    asked = "; ".join(d.describe() for d in demands(config, realtime))
    total = {k: sum(d.replicas * d.resources.get(k, 0.0) for d in demands(config, realtime)) for k in ("CPU", "GPU")}
    total = {k: round(v, 3) for k, v in total.items() if v}
    return (
        f"{why}: the minimum replicas ask {asked} (in all {fmt_resources(total)}); "
        f"{cluster_summary(nodes, available)}. Lower num_cpus/num_gpus or min_replicas in the config, "
        "or add nodes"
    )


def check_placeable(config: ServeAppConfig, wait_s: float = 0.0, realtime: bool | None = None) -> None:
    """Raise :class:`UnschedulableError` unless the minimum replicas fit the cluster's nodes.

    With ``wait_s`` > 0 an infeasible request is handed to the autoscaler (``request_resources``)
    and re-checked until it fits or ``wait_s`` passes; a cluster without an autoscaler just fails
    at the deadline. Does nothing when Ray is not initialised (e.g. building the app to inspect it).
    ``realtime=False`` leaves the realtime application's replicas out (building the HTTP app alone).
    """
    import ray

    if not ray.is_initialized():
        return
    bundles = [d.resources for d in demands(config, realtime) for _ in range(d.replicas)]
    deadline = time.monotonic() + wait_s
    requested = False
    while True:
        nodes = _alive_nodes(ray)
        if _pack(bundles, nodes):
            if requested:
                _request_resources([])
            return
        if time.monotonic() >= deadline:
            if requested:
                _request_resources([])
            raise UnschedulableError(unschedulable_message(config, nodes, "cannot place the Serve application",
                                                           realtime=realtime))
        if not requested:
            requested = _request_resources(bundles)
            logger.warning("the minimum replicas do not fit the cluster yet; waiting up to %g s for nodes", wait_s)
        time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))


def _request_resources(bundles: list[dict[str, float]]) -> bool:
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
        return True
    except Exception:  # no autoscaler API reachable: nothing to ask
        return False


def wait_running(app: str, config: ServeAppConfig, timeout_s: float, poll_s: float = 0.5) -> None:
    """Block until ``app`` is RUNNING; raise :class:`UnschedulableError` naming each deployment that
    is not when ``timeout_s`` passes (or at once when Serve reports the deploy failed)."""
    import ray
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(app)
        state = str(getattr(status, "status", "")) if status else ""
        if state.endswith("RUNNING"):
            return
        if state.endswith("DEPLOY_FAILED"):
            failed = [f"{name} failed to start: {failure_summary(dep.message)}"
                      for name, dep in status.deployments.items() if str(dep.status).endswith("UNHEALTHY")]
            raise DeployFailedError("; ".join(failed) or f"the Serve application failed to deploy: "
                                    f"{failure_summary(status.message)}")
        if time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    waiting = []
    asked = {d.deployment: d for d in demands(config)}
    for name, dep in (status.deployments if status else {}).items():
        if not str(dep.status).endswith("HEALTHY"):
            d = asked.get(name)
            what = f"asks {d.replicas} x {fmt_resources(d.resources)}" if d else ""
            waiting.append(f"{name} ({str(dep.status).split('.')[-1]}, {what})")
    nodes = _alive_nodes(ray)
    raise UnschedulableError(
        f"the Serve application did not become ready within {timeout_s:g} s; not running: "
        f"{'; '.join(waiting) or 'unknown'}; {cluster_summary(nodes, ray.available_resources())}. "
        "Lower num_cpus/num_gpus or min_replicas in the config, add nodes, or raise startup_timeout_s"
    )
