"""Options of the Serve application: one pydantic model parsed from ``deployments/serve.yaml``'s
``args`` (and the same block inside ``k8s/rayservice.yaml``); ``voxray serve`` flags override it."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from voxray.asr.config import ASROptions
from voxray.config import Options
from voxray.embed.config import EmbedOptions
from voxray.tts.config import TTSOptions


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


class DeploymentOptions(Options):
    """Placement, back-pressure and batching of one model deployment."""

    enabled: bool = True
    num_cpus: float = Field(1.0, ge=0, description="CPUs per replica")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica")
    max_ongoing_requests: int = Field(
        64, ge=1, description="requests a replica holds at once: well above the batch size so batches fill"
    )
    max_queued_requests: int = Field(
        128, ge=-1, description="requests waiting per caller before 503 (back-pressure; -1 = unbounded)"
    )
    max_batch_size: int = Field(16, ge=1, description="requests per @serve.batch call (count cap)")
    max_batch_seconds: float = Field(
        120.0, ge=30, description="audio seconds per @serve.batch call (ASR, embeddings; a file counts <= 30)"
    )
    batch_wait_timeout_s: float = Field(0.02, ge=0, description="wait this long for a batch to fill")
    autoscaling: AutoscalingOptions = Field(default_factory=AutoscalingOptions)

    def serve_options(self) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        auto = self.autoscaling.model_dump(exclude_none=True)
        return {
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus},
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "autoscaling_config": auto,
        }


class IngressOptions(Options):
    """The HTTP edge: limits, auth and the names clients may use for each model."""

    max_upload_mb: float = Field(25.0, gt=0, description="largest accepted upload (413 beyond)")
    max_audio_s: float = Field(1800.0, gt=0, description="longest accepted audio (400 beyond)")
    max_text_chars: int = Field(8000, ge=1, description="longest accepted TTS input (400 beyond)")
    api_key_env: str = Field("VOXRAY_API_KEY", description="env var holding the bearer token; unset = no auth")
    asr_aliases: list[str] = Field(default_factory=lambda: ["whisper-1"], description="extra names for ASR")
    tts_aliases: list[str] = Field(default_factory=lambda: ["tts-1", "tts-1-hd", "kokoro"])
    embed_aliases: list[str] = Field(default_factory=list)
    retry_after_s: int = Field(2, ge=1, description="Retry-After header on 503")
    num_cpus: float = Field(0.5, ge=0)
    max_ongoing_requests: int = Field(256, ge=1)


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
