# syntax=docker/dockerfile:1.7
# voxray on GPUs: CUDA 12.8 + cuDNN runtime, Python 3.11, CUDA torch, onnxruntime-gpu, Ray with the
# dashboard (KubeRay and `ray job submit` need it). The image KubeRay and the cluster launcher run.
#
#   docker build -t REGISTRY/voxray:0.1.0-cuda .
#   docker build --build-arg MODEL_HOME=/opt/models \
#       --build-arg BAKE_MODELS="kresnik/wav2vec2-large-xlsr-korean" -t REGISTRY/voxray:0.1.0-cuda-baked .
#
# Models: by default HF_HOME=/models/hf and VOXRAY_CACHE=/models/voxray, a volume (the k8s PVC
# voxray-model-cache, or a host dir) shared by every pod, so each model is fetched once per cluster.
# With MODEL_HOME=/opt/models and BAKE_MODELS, the hub models and the embedded Kokoro model are
# downloaded at build time into the image instead (no volume, no hub access at run time).
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
FROM ${CUDA_IMAGE}

ARG PYTHON_VERSION=3.11
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
ARG RAY_VERSION=2.60.0
ARG FSSPEC_VERSION=2026.9.0
ARG MODEL_HOME=/models
ARG BAKE_MODELS=""

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    HF_HOME=${MODEL_HOME}/hf \
    VOXRAY_CACHE=${MODEL_HOME}/voxray

# wget/curl: KubeRay's probes and the cluster launcher; libgomp1: onnxruntime/torch CPU ops.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl wget libgomp1 tini \
    && rm -rf /var/lib/apt/lists/*

# uv installs a standalone CPython 3.11 (Ubuntu 24.04 ships 3.12) and the packages, fast.
COPY --from=ghcr.io/astral-sh/uv:0.8.22 /uv /usr/local/bin/uv

# KubeRay runs containers as uid 1000 (fsGroup 1000 on the model-cache volume).
RUN (userdel -r ubuntu 2>/dev/null || true) \
    && useradd --uid 1000 --create-home --shell /bin/bash ray \
    && mkdir -p /app "${MODEL_HOME}" \
    && chown ray:ray /app "${MODEL_HOME}"

RUN uv python install "${PYTHON_VERSION}" \
    && uv venv --python "${PYTHON_VERSION}" /opt/venv

# CUDA torch first (so the package's torch>=2.4 is already satisfied), then Ray with the dashboard.
RUN uv pip install --index-url "${TORCH_INDEX}" "torch==${TORCH_VERSION}" \
    && uv pip install "ray[default,data,serve]==${RAY_VERSION}" "s3fs==${FSSPEC_VERSION}" "gcsfs==${FSSPEC_VERSION}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY voxray/ ./voxray/
# The TTS extra brings onnxruntime (CPU); swap in onnxruntime-gpu at the same version: both
# install the `onnxruntime` module, so the CPU one must go first.
RUN uv pip install ".[tts]" \
    && ORT_VERSION="$(python -c 'import importlib.metadata as m; print(m.version("onnxruntime"))')" \
    && uv pip uninstall onnxruntime \
    && uv pip install --no-deps "onnxruntime-gpu==${ORT_VERSION}" \
    && python -c "import onnxruntime, torch, ray, voxray; print(onnxruntime.get_available_providers())"

# Job specs and the Serve config, at the paths the RayJobs and the launcher name (/app/jobs/...).
COPY jobs/ /app/jobs/
COPY deployments/ /app/deployments/
COPY samples/books/ /app/samples/books/

# Optional: bake models (MODEL_HOME=/opt/models BAKE_MODELS="hub/id ...").
RUN if [ -n "${BAKE_MODELS}" ]; then \
        python -c "import sys; from huggingface_hub import snapshot_download; [snapshot_download(m) for m in sys.argv[1:]]" ${BAKE_MODELS} \
        && python -c "from voxray.tts.assets import resolve_model; resolve_model('embedded')" ; \
    fi \
    && chown -R ray:ray "${MODEL_HOME}"

USER 1000
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["voxray", "--help"]
