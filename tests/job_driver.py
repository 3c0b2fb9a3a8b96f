"""A job driver in its own process, for tests that kill the driver or run it beside a multi-node cluster.

    python tests/job_driver.py '{"job": {...TranscribeJob...}, "actor": "LogicalGPUTranscribeActor"}'

Prints ``SESSION <dir>`` once Ray is up (voxray's own local cluster, or the joined one), a voxray
WARNING from inside a Ray task (to check it reaches the driver), ``BEFORE ...`` for each job of
``before``, ``REPORT <json>`` for the main job, then ``AFTER ...`` for each job of ``after`` (those
run the production ``TranscribeActor``).
"""

from __future__ import annotations

import json
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main() -> int:
    import job_faults
    import ray

    from voxray.cluster import configure_worker_logging, init_ray, session_dir, shutdown_ray
    from voxray.errors import VoxrayError
    from voxray.jobs.transcribe import TranscribeActor, TranscribeJob, run_transcribe

    spec = json.loads(sys.argv[1])
    job = TranscribeJob(**spec["job"])
    actor = getattr(job_faults, spec["actor"]) if spec.get("actor") else TranscribeActor
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    started = init_ray(job.ray)
    print(f"SESSION {session_dir()}", flush=True)

    @ray.remote(num_cpus=0)
    def speak() -> None:
        configure_worker_logging()
        logging.getLogger("voxray.test").warning("worker says hello at WARNING")
        logging.getLogger("voxray.test").info("worker says hello at INFO")
        print("plain worker print")

    if spec.get("speak"):
        ray.get(speak.remote())
    try:
        for extra in spec.get("before", []):  # jobs that must fail first, e.g. a short capacity wait
            try:
                run_transcribe(TranscribeJob(**{**spec["job"], **extra}), actor_cls=actor)
                print("BEFORE ok", flush=True)
            except VoxrayError as exc:
                print(f"BEFORE {type(exc).__name__}: {exc.message}", flush=True)
        report = run_transcribe(job, actor_cls=actor)
        print("REPORT " + json.dumps(report, default=str), flush=True)
        for extra in spec.get("after", []):  # e.g. the production actor on a logical GPU: no CUDA
            try:
                run_transcribe(TranscribeJob(**{**spec["job"], **extra}))
                print("AFTER ok", flush=True)
            except VoxrayError as exc:
                print(f"AFTER {type(exc).__name__}: {exc.message}", flush=True)
    finally:
        if started:
            shutdown_ray()
    return 0


if __name__ == "__main__":
    sys.exit(main())
