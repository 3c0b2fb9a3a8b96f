"""Options of the Serve application: one pydantic model parsed from ``deployments/serve.yaml``'s
``args`` (and the same block inside ``k8s/base/rayservice.yaml``); ``voxray serve`` flags override it.

Every knob of the online service has its home here (HTTP request models and ``voxray serve``
flags derive from these fields), and contradictions fail when the config loads, not under load.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, model_validator

from voxray.asr.config import ASROptions, StreamingOptions
from voxray.config import Options
from voxray.embed.config import EmbedOptions
from voxray.tts.config import TTSOptions

# CPUs a replica reserves when the config leaves ``num_cpus`` unset and nothing fitted it
# (`serve run` on a cluster voxray did not start): Serve's own default for model replicas.
DEFAULT_MODEL_CPUS = 1.0
DEFAULT_INGRESS_CPUS = 0.5



def read_api_key(env: str, path: str | None) -> str | None:
    """An API key read on the node where this runs: the file (a mounted Secret) first, then ``$env``."""
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.read().strip() or None
        except OSError:
            return None
    return os.environ.get(env) or None


class AutoscalingOptions(Options):
    """Serve's autoscaling knobs (a subset of ``ray.serve.config.AutoscalingConfig``)."""

    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    initial_replicas: int | None = Field(None, ge=0)
    target_ongoing_requests: float = Field(8.0, gt=0, description="queued+running requests per replica to aim for")
    upscale_delay_s: float = Field(5.0, ge=0, description="sustained load before adding replicas")
    downscale_delay_s: float = Field(30.0, ge=0, description="sustained idleness before removing replicas")
    metrics_interval_s: float = Field(2.0, gt=0)
    look_back_period_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas={self.min_replicas} exceeds max_replicas={self.max_replicas}")
        return self

    @property
    def start_replicas(self) -> int:
        """Replicas that must be placed before the application can answer."""
        return max(self.min_replicas, self.initial_replicas or 0, 1)


class ReplicaOptions(Options):
    """What every replica (model or ingress) asks of the cluster and how Serve stops it."""

    num_cpus: float | None = Field(
        None, ge=0,
        description="CPUs per replica (unset: `voxray serve` fits a share of a local cluster it started; "
        f"otherwise {DEFAULT_MODEL_CPUS:g} per model replica, {DEFAULT_INGRESS_CPUS:g} per ingress replica)",
    )
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica")
    graceful_shutdown_timeout_s: float = Field(
        30.0, ge=0, description="on stop/redeploy, how long a replica may finish its in-flight requests"
    )

    def actor_options(self, default_cpus: float) -> dict[str, Any]:
        """``ray_actor_options`` of one replica."""
        res = self.resources(default_cpus)
        return {"num_cpus": res["CPU"], "num_gpus": res.get("GPU", 0.0)}

    def resources(self, default_cpus: float) -> dict[str, float]:
        """The resource bundle of one replica (what placement checks and Ray reserve)."""
        out = {"CPU": self.num_cpus if self.num_cpus is not None else default_cpus}
        if self.num_gpus:
            out["GPU"] = self.num_gpus
        return out


class DeploymentOptions(ReplicaOptions):
    """Placement, back-pressure, batching and health checks of one model deployment."""

    enabled: bool = True
    name: str | None = Field(
        None, description="model id clients see in /v1/models and responses (default: the hub id, or the "
        "local model directory's/file's name; never a server path)",
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="requests a replica holds at once: well above the batch size so batches fill"
    )
    max_queued_requests: int = Field(
        128, ge=-1, description="requests waiting per caller before 503 + Retry-After (-1 = unbounded)"
    )
    max_batch_size: int = Field(16, ge=1, description="requests per model forward (count cap)")
    max_batch_seconds: float = Field(
        120.0, ge=30, description="audio seconds per model forward (ASR, embeddings; a file counts <= 30)"
    )
    batch_wait_timeout_s: float = Field(
        0.02, ge=0, description="an idle replica waits this long after a request for others to join its forward"
    )
    health_check_period_s: float = Field(10.0, gt=0, description="seconds between Serve's health checks")
    health_check_timeout_s: float = Field(30.0, gt=0, description="a health check slower than this fails")
    probe_interval_s: float = Field(
        30.0, ge=0, description="run a tiny real input through the model at most this often in health checks"
    )
    stuck_after_s: float = Field(
        600.0, gt=0, description="a model call running longer than this makes the replica unhealthy (restart)"
    )
    languages: list[str] | None = Field(
        None, description="ASR only: languages the model transcribes (ISO 639-1, e.g. ['ko']; default: "
        "read from the script of its vocabulary)",
    )
    autoscaling: AutoscalingOptions = Field(default_factory=AutoscalingOptions)

    @model_validator(mode="after")
    def _batches_can_fill(self) -> DeploymentOptions:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests={self.max_ongoing_requests} is below max_batch_size={self.max_batch_size}: "
                "a replica never holds enough requests to fill a batch; raise max_ongoing_requests "
                "(well above the batch size) or lower max_batch_size"
            )
        return self

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        return {
            "ray_actor_options": self.actor_options(DEFAULT_MODEL_CPUS),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "autoscaling_config": self.autoscaling.model_dump(exclude_none=True),
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
        }


class IngressOptions(ReplicaOptions):
    """The HTTP edge: limits checked before work, auth, retries, and the names clients may use."""

    max_upload_mb: float = Field(
        25.0, gt=0, description="largest request body (413 from Content-Length before reading, or while streaming)"
    )
    max_audio_s: float = Field(
        1800.0, gt=0, description="longest accepted audio, from the header before decoding (413 beyond)"
    )
    max_sample_rate: int = Field(384_000, ge=8000, description="uploads declaring a higher rate are refused (400)")
    max_channels: int = Field(32, ge=1, description="uploads declaring more channels are refused (400)")
    max_text_chars: int = Field(8000, ge=1, description="longest accepted TTS input (400 beyond)")
    api_key_env: str = Field(
        "VOXRAY_API_KEY", description="env var holding the bearer token, read on each ingress node (never "
        "copied into runtime_env)",
    )
    api_key_file: str | None = Field(
        None, description="file holding the bearer token (e.g. a mounted Kubernetes Secret); wins over the env var"
    )
    auth_required: bool = Field(
        False, description="refuse to start an ingress replica that finds no key (set by `voxray serve` when "
        "it was started with a key), instead of silently serving without auth",
    )
    asr_aliases: list[str] = Field(default_factory=lambda: ["whisper-1"], description="extra names for ASR")
    tts_aliases: list[str] = Field(default_factory=lambda: ["tts-1", "tts-1-hd", "kokoro"])
    embed_aliases: list[str] = Field(default_factory=list)
    retry_after_s: int = Field(2, ge=1, description="Retry-After header on 503")
    replica_retries: int = Field(
        1, ge=0, le=3, description="retries of an ASR/embedding request whose replica died (idempotent calls)"
    )
    max_ongoing_requests: int = Field(256, ge=1)

    def api_key(self) -> str | None:
        """The configured key, read where this runs (file first, then env); None = auth off."""
        return read_api_key(self.api_key_env, self.api_key_file)

    @property
    def max_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class RealtimeDeploymentOptions(ReplicaOptions):
    """The realtime transcription application (WebSocket ``/v1/realtime``): batching and limits.

    It serves the ``asr`` model of the same config with the ``streaming`` windows, behind the
    ingress's auth settings; ``voxray serve`` deploys it beside the HTTP application.
    """

    enabled: bool = True
    batch_streams: bool = Field(True, description="run the windows of all live sessions as one forward")
    max_batch_windows: int = Field(32, ge=1, le=256, description="windows per batched forward, at most")
    batch_wait_s: float = Field(0.01, ge=0, le=1, description="how long a batch waits for more sessions")
    max_sessions: int = Field(32, ge=1, description="live sessions per replica; more are refused (close 1013)")
    max_message_bytes: int = Field(1 << 20, ge=1024, description="largest client frame accepted")
    autoscaling: AutoscalingOptions = Field(
        default_factory=lambda: AutoscalingOptions(min_replicas=1, max_replicas=2, target_ongoing_requests=16,
                                                   downscale_delay_s=60),
        description="replicas; target_ongoing_requests counts live sessions",
    )

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        return {
            "ray_actor_options": self.actor_options(DEFAULT_MODEL_CPUS),
            "max_ongoing_requests": self.max_sessions + 4,  # a full replica still answers /stats and refusals
            "autoscaling_config": self.autoscaling.model_dump(exclude_none=True),
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "health_check_period_s": 10,
        }


class ServeAppConfig(Options):
    """The whole application: which deployments run, with what models, behind which ingress."""

    asr: ASROptions = Field(default_factory=ASROptions)
    asr_deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    embed: EmbedOptions = Field(default_factory=EmbedOptions)
    embed_deployment: DeploymentOptions = Field(default_factory=DeploymentOptions)
    tts: TTSOptions = Field(default_factory=TTSOptions)
    tts_deployment: DeploymentOptions = Field(
        default_factory=lambda: DeploymentOptions(max_batch_size=1, max_ongoing_requests=8)
    )
    ingress: IngressOptions = Field(default_factory=IngressOptions)
    streaming: StreamingOptions = Field(default_factory=StreamingOptions)
    realtime_deployment: RealtimeDeploymentOptions = Field(default_factory=RealtimeDeploymentOptions)
    startup_timeout_s: float = Field(
        120.0, gt=0, description="fail (naming each deployment, what it asked and what the cluster has) when the "
        "minimum replicas cannot be placed within this time",
    )

    def model_deployments(self) -> dict[str, DeploymentOptions]:
        """Enabled model deployments by kind (asr, embed, tts)."""
        deps = {"asr": self.asr_deployment, "embed": self.embed_deployment, "tts": self.tts_deployment}
        return {k: d for k, d in deps.items() if d.enabled}

    @property
    def realtime_enabled(self) -> bool:
        """The realtime application runs: it is enabled and so is the ASR it streams."""
        return self.realtime_deployment.enabled and self.asr_deployment.enabled


DEPLOYMENT_NAMES = {"asr": "ASR", "embed": "Embed", "tts": "TTS", "ingress": "Ingress",
                    "realtime": "RealtimeTranscription"}
REALTIME_APP = "voxray-realtime"
REALTIME_ROUTE = "/v1/realtime"
