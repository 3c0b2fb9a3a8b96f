"""Shared fixtures: one local Ray cluster per test session (stopped by us, never `ray stop`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
# A job stuck behind leaked resources fails in 5 minutes, not after Ray's default 30 (drivers run as
# subprocesses inherit it too).
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "300")


@pytest.fixture(scope="session")
def ray_cluster():
    """A local 2-CPU Ray cluster in a private temp dir; shut down at the end of the session."""
    import ray

    os.environ.pop("RAY_ADDRESS", None)
    tmp = tempfile.mkdtemp(prefix="vxr-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=tmp, log_to_driver=False)
    try:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module", autouse=True)
def _module_returns_the_cluster():
    """Fail the module that leaks: every CPU of the session cluster is free again after it.

    The cluster is shared by the whole session, so a Serve app or actor pool left behind would
    otherwise surface as a hang in some unrelated later module.
    """
    yield
    import ray

    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.time() + 60
    while ray.available_resources().get("CPU", 0.0) < total - 1e-6 and time.time() < deadline:
        time.sleep(0.5)
    free = ray.available_resources().get("CPU", 0.0)
    if free < total - 1e-6:
        pytest.fail(f"this module left {total - free:g} of {total:g} CPUs of the session cluster held "
                    "(a Serve app, actor or placement group outlived its test)")
