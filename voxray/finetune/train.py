"""CTC fine-tuning on Ray Train: a ``TorchTrainer`` with data-parallel workers (GPUs when the
cluster has them, CPUs otherwise), periodic CER/WER evaluation (jiwer), best-checkpoint
selection and resume from the last checkpoint.

Layout of ``out``: the best model as an ordinary HF dir (``model.safetensors``, ``config.json``,
processor files) at the top, so ``voxray transcribe --model OUT`` loads it unchanged;
``checkpoints/run/`` (Ray Train storage: checkpoints with optimizer state, used by resume);
``finetune.json`` (the run report with the eval curve).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from voxray.finetune.config import FinetuneJob
from voxray.finetune.data import (
    BatchStream,
    Utterance,
    collate,
    length_grouped_batches,
    load_utterances,
    read_rows,
    set_name,
)
from voxray.finetune.vocab import VocabKind, build_vocab, covers, make_processor, processor_vocab, vocab_kind

logger = logging.getLogger("voxray.finetune")

RUN_NAME = "run"
STATE_FILE = "trainer_state.json"
TRAINING_FILES = ("optimizer.pt", "scheduler.pt", STATE_FILE)
REPORT_NAME = "finetune.json"


@dataclass
class EvalResult:
    """Error counts summed over workers; rates derived."""

    cer: float
    wer: float
    by_set: dict[str, dict[str, float]]
    examples: list[dict[str, str]] = field(default_factory=list)


@dataclass
class FinetuneReport:
    """``finetune.json``: what the run did and how well the chosen checkpoint scores."""

    out: str
    model_source: str
    vocab: str
    vocab_size: int
    parameters: int
    trainable_parameters: int
    num_workers: int
    use_gpu: bool
    precision: str
    train_utterances: int
    train_hours: float
    eval_utterances: int
    resumed_from_step: int
    steps: int
    best_step: int
    best_cer: float
    best_wer: float
    best_by_set: dict[str, dict[str, float]]
    train_wall_s: float
    audio_hours_seen: float
    audio_hours_per_wall_hour: float
    wall_s: float
    curve: list[dict[str, Any]] = field(default_factory=list)
    examples: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------- pieces used by the workers
def autocast_dtype(precision: str, device_type: str) -> Any:
    """None for fp32; bf16 on CPU or GPU; fp16 on GPU only (with a grad scaler)."""
    import torch

    if precision == "auto":
        if device_type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    if precision == "fp16" and device_type != "cuda":
        raise ValueError("precision=fp16 needs a GPU; use bf16 (CPU autocast) or fp32")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def lr_lambda(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def evaluate(
    model: Any,
    utts: list[Utterance],
    decoder: Any,
    kind: VocabKind,
    set_names: list[str],
    batch_seconds: float,
    device: Any,
    dtype: Any,
) -> tuple[np.ndarray, list[tuple[str, str, int]]]:
    """Greedy-decode this worker's eval shard: per set [char_errors, chars, word_errors, words]."""
    import jiwer
    import torch

    from voxray import text_ko

    counts = np.zeros((len(set_names), 4), dtype=np.float64)
    pairs: list[tuple[str, str, int]] = []
    was_training = model.training
    model.eval()
    lengths = np.array([len(u.audio) for u in utts])
    with torch.no_grad():
        for idx in length_grouped_batches(lengths, batch_seconds * 16000, 256, 0, shuffle=False):
            batch = [utts[i] for i in idx]
            inputs = collate(batch, with_labels=False)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(
                    input_values=inputs["input_values"].to(device), attention_mask=inputs["attention_mask"].to(device)
                ).logits
            ids = logits.argmax(-1).cpu().numpy()
            frames = model._get_feat_extract_output_lengths(inputs["attention_mask"].sum(-1)).cpu().numpy()
            for u, row, n in zip(batch, ids, frames, strict=True):
                text, _ = decoder.decode(row[: int(n)])
                hyp = text_ko.compose(text) if kind == "jamo" else text
                pairs.append((u.text, hyp, u.group))
    if was_training:
        model.train()
    for g in range(len(set_names)):
        refs = [r for r, _, gg in pairs if gg == g]
        hyps = [h for _, h, gg in pairs if gg == g]
        if not refs:
            continue
        c = jiwer.process_characters(refs, hyps)
        w = jiwer.process_words(refs, hyps)
        counts[g] = [
            c.substitutions + c.deletions + c.insertions, c.substitutions + c.deletions + c.hits,
            w.substitutions + w.deletions + w.insertions, w.substitutions + w.deletions + w.hits,
        ]
    return counts, pairs


def summarize_eval(counts: np.ndarray, set_names: list[str]) -> EvalResult:
    total = counts.sum(axis=0)
    by_set = {
        name: {"cer": float(c[0] / c[1]) if c[1] else float("nan"), "wer": float(c[2] / c[3]) if c[3] else float("nan")}
        for name, c in zip(set_names, counts, strict=True)
    }
    return EvalResult(
        cer=float(total[0] / total[1]) if total[1] else float("nan"),
        wer=float(total[2] / total[3]) if total[3] else float("nan"),
        by_set=by_set,
    )


def _all_reduce(array: np.ndarray) -> np.ndarray:
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return array
    t = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float64))
    dist.all_reduce(t)
    return t.numpy()


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """One data-parallel worker: load its shard, train, evaluate, checkpoint (rank 0), report."""
    import ray.train
    import ray.train.torch
    import safetensors.torch
    import torch

    from voxray.asr.ctc import CTCDecoder
    from voxray.encoder.core import conv_frames
    from voxray.finetune.base_model import apply_freeze, build_model, save_hf

    job = FinetuneJob(**config["job"])
    _worker_logging()
    vocab: dict[str, int] = config["vocab"]
    kind: VocabKind = config["kind"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(int(config["threads"]))
    torch.manual_seed(job.seed)
    device = ray.train.torch.get_device()
    dtype = autocast_dtype(job.precision, device.type)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None

    with tempfile.TemporaryDirectory() as tmp:
        processor = make_processor(vocab, tmp)
    model = build_model(job, vocab, config["base_path"], config["keep_head"])
    apply_freeze(model, job.freeze_mode)
    cfg = model.config
    min_frames = lambda n: conv_frames(cfg, n)  # noqa: E731

    t_load = time.perf_counter()
    train_rows = config["train_rows"][rank::world]
    eval_rows = config["eval_rows"][rank::world]
    train_utts, skipped = load_utterances(train_rows, vocab, kind, min_frames, job.max_audio_s)
    eval_utts, eval_skipped = load_utterances(eval_rows, vocab, kind, min_frames, None)
    data = _all_reduce(np.array([len(train_utts), sum(u.seconds for u in train_utts), skipped, len(eval_utts)]))
    logger.info(
        "worker %d/%d: %d train (%d skipped), %d eval utterances, loaded in %.1fs",
        rank, world, len(train_utts), skipped, len(eval_utts), time.perf_counter() - t_load,
    )
    if not train_utts:
        from voxray.errors import InputError

        raise InputError(
            f"worker {rank}: all {len(train_rows)} training rows were skipped (unreadable audio, empty "
            f"transcript, longer than max_audio_s={job.max_audio_s}, or fewer frames than labels); "
            f"first row: {train_rows[0] if train_rows else None}"
        )
    stream = BatchStream(train_utts, job.batch_seconds, job.max_batch_items, job.seed + 7919 * rank)
    decoder = CTCDecoder.from_tokenizer(processor.tokenizer, 0.02)
    set_names = config["set_names"]

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=job.lr, betas=(job.adam_beta1, job.adam_beta2), weight_decay=job.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, job.warmup_steps, job.max_steps)
    )
    state: dict[str, Any] = {"step": 0, "train_wall_s": 0.0, "audio_s": 0.0, "curve": [], "stream": {}}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            model.load_state_dict(safetensors.torch.load_file(os.path.join(d, "model.safetensors")))
            optimizer.load_state_dict(torch.load(os.path.join(d, "optimizer.pt"), weights_only=True))
            scheduler.load_state_dict(torch.load(os.path.join(d, "scheduler.pt"), weights_only=True))
            with open(os.path.join(d, STATE_FILE), encoding="utf-8") as fh:
                state = json.load(fh)
        stream.restore(state["stream"].get(str(rank), {}))
        logger.info("resumed from step %d", state["step"])
    state["resumed_from_step"] = int(state["step"])
    state["data"] = {"train_utterances": int(data[0]), "train_hours": float(data[1] / 3600),
                     "train_skipped": int(data[2]), "eval_utterances": int(data[3])}
    model = ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"find_unused_parameters": True})
    raw = model.module if hasattr(model, "module") else model
    model.train()

    step = int(state["step"])
    loss_sum, loss_n, audio_s, t_interval = 0.0, 0, 0.0, time.perf_counter()
    while step < job.max_steps:
        for micro in range(job.grad_accum):
            batch = stream.next()
            inputs = {k: v.to(device) for k, v in collate(batch).items()}
            last = micro == job.grad_accum - 1
            # gradients are all-reduced once per optimizer step, not per micro-batch
            with model.no_sync() if not last and hasattr(model, "no_sync") else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    loss = model(**inputs).loss / job.grad_accum
                (scaler.scale(loss) if scaler is not None else loss).backward()
            loss_sum += float(loss.detach()) * job.grad_accum
            loss_n += 1
            audio_s += sum(u.seconds for u in batch)
        if scaler is not None:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, job.max_grad_norm)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if rank == 0 and step % job.log_every == 0:
            lr = scheduler.get_last_lr()[0]
            logger.info("step %d loss %.4f lr %.2e", step, loss_sum / max(1, loss_n), lr)
            elapsed = float(state["train_wall_s"]) + time.perf_counter() - t_interval
            record = {"step": step, "loss": loss_sum / max(1, loss_n), "lr": lr, "train_wall_s": elapsed}
            _progress(config.get("log_path"), record)
        if step % job.eval_every == 0 or step == job.max_steps:
            train_s = time.perf_counter() - t_interval
            sums = _all_reduce(np.array([loss_sum, loss_n, audio_s]))
            t_eval = time.perf_counter()
            counts, pairs = evaluate(
                raw, eval_utts, decoder, kind, set_names, job.eval_batch_seconds, device, dtype
            )
            result = summarize_eval(_all_reduce(counts), set_names)
            state["step"] = step
            state["train_wall_s"] = float(state["train_wall_s"]) + train_s
            state["audio_s"] = float(state["audio_s"]) + float(sums[2])
            point = {
                "step": step, "train_wall_s": round(state["train_wall_s"], 2),
                "audio_hours": round(state["audio_s"] / 3600, 4),
                "train_loss": float(sums[0] / max(1.0, sums[1])), "lr": float(scheduler.get_last_lr()[0]),
                "cer": result.cer, "wer": result.wer, "by_set": result.by_set,
                "eval_s": round(time.perf_counter() - t_eval, 2),
            }
            state["curve"] = [*state["curve"], point]
            streams = _gather_stream_states(stream.state(), world)
            state["stream"] = {str(r): s for r, s in enumerate(streams)}
            state["examples"] = [{"ref": r, "hyp": h} for r, h, _ in pairs[:8]]
            metrics = {k: point[k] for k in ("step", "train_loss", "cer", "wer", "lr", "audio_hours")}
            if rank == 0:
                _progress(config.get("log_path"), {"eval": True, **point})
                logger.info(
                    "step %d eval CER %.4f WER %.4f (loss %.4f)", step, result.cer, result.wer, point["train_loss"]
                )
                with tempfile.TemporaryDirectory() as d:
                    save_hf(raw, processor, d)
                    torch.save(optimizer.state_dict(), os.path.join(d, "optimizer.pt"))
                    torch.save(scheduler.state_dict(), os.path.join(d, "scheduler.pt"))
                    with open(os.path.join(d, STATE_FILE), "w", encoding="utf-8") as fh:
                        json.dump(state, fh, ensure_ascii=False)
                    ray.train.report(
                        metrics, checkpoint=ray.train.Checkpoint.from_directory(d),
                        checkpoint_dir_name=f"step-{step:07d}",
                    )
            else:
                ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=f"step-{step:07d}")
            loss_sum, loss_n, audio_s, t_interval = 0.0, 0, 0.0, time.perf_counter()


def _worker_logging() -> None:
    """Ray workers start with unconfigured logging: show voxray's INFO lines in the worker logs."""
    root = logging.getLogger("voxray")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)


def _progress(path: str | None, record: dict[str, Any]) -> None:
    """Append a JSON line to OUT/train_log.jsonl (best effort: only where OUT is reachable)."""
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"time": time.time(), **record}, ensure_ascii=False) + "\n")
    except OSError:
        pass


def _gather_stream_states(mine: dict[str, int], world: int) -> list[dict[str, int]]:
    """Every worker's batch-stream position (saved by rank 0 so each rank resumes its own)."""
    import torch.distributed as dist

    if world == 1 or not dist.is_initialized():
        return [mine]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, mine)
    return out


# ---------------------------------------------------------------- driver
def prepare_vocab(job: FinetuneJob, texts: list[str]) -> tuple[dict[str, int], VocabKind, str | None, bool]:
    """(vocab, kind, resolved base path, keep the base's CTC head)."""
    from voxray.finetune.base_model import base_processor

    base_path, processor = base_processor(job)
    if job.vocab in ("auto", "base") and processor is not None:
        vocab = processor_vocab(processor)
        if job.vocab == "base" or covers(vocab, texts):
            return vocab, vocab_kind(vocab), base_path, True
        logger.info("the base model's vocabulary does not cover the transcripts: building a new one")
    if job.vocab == "base":
        from voxray.errors import ModelUnavailableError

        raise ModelUnavailableError(f"vocab=base but {job.base} has no tokenizer/vocab.json")
    kind: VocabKind = "syllable" if job.vocab == "syllable" else "jamo"
    return build_vocab(texts, kind), kind, base_path, False


def _worker_plan(job: FinetuneJob) -> tuple[bool, float, int]:
    import ray

    resources = ray.cluster_resources()
    use_gpu = job.use_gpu if job.use_gpu is not None else resources.get("GPU", 0) >= 1
    cpus = job.cpus_per_worker
    if cpus is None:  # GPU workers need little CPU; CPU workers share the cluster's cores
        cpus = 1.0 if use_gpu else max(1.0, float(int(resources.get("CPU", 1) // job.num_workers)))
    threads = job.threads_per_worker or max(1, int(cpus))
    return bool(use_gpu), cpus, threads


def run_finetune(job: FinetuneJob) -> dict[str, Any]:
    """Run (or resume) the fine-tuning and write the best model to ``job.out``; returns the report."""
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from voxray.cluster import init_ray
    from voxray.errors import InputError
    from voxray.finetune.base_model import build_model, count_parameters

    t0 = time.perf_counter()
    if not job.train or not job.eval:
        raise InputError("fine-tuning needs --train and --eval manifests (columns: path, text)")
    out = os.path.abspath(job.out)
    os.makedirs(out, exist_ok=True)
    train_rows, eval_rows = read_rows(job.train), read_rows(job.eval)
    if not train_rows:
        raise InputError(f"no training rows in {job.train}")
    # spread long and short utterances over workers: shard a shuffled order
    perm = np.random.default_rng(job.seed).permutation(len(train_rows))
    train_rows = [{**train_rows[i], "group": 0} for i in perm]
    vocab, kind, base_path, keep_head = prepare_vocab(job, [r["text"] for r in train_rows])
    model = build_model(job, vocab, base_path, keep_head)
    total, _ = count_parameters(model)
    from voxray.finetune.base_model import apply_freeze

    apply_freeze(model, job.freeze_mode)
    _, trainable = count_parameters(model)
    del model
    storage = os.path.join(out, "checkpoints")
    if not job.resume and os.path.isdir(os.path.join(storage, RUN_NAME)):
        shutil.rmtree(os.path.join(storage, RUN_NAME))
    logger.info("vocab: %s, %d units; model: %d parameters (%d trainable)", kind, len(vocab), total, trainable)

    started = init_ray(job.ray)
    try:
        use_gpu, cpus, threads = _worker_plan(job)
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={
                "job": job.model_dump(), "vocab": vocab, "kind": kind, "base_path": base_path,
                "keep_head": keep_head, "train_rows": train_rows, "eval_rows": eval_rows,
                "set_names": [set_name(m) for m in job.eval], "threads": threads,
                "log_path": os.path.join(out, "train_log.jsonl"),
            },
            scaling_config=ScalingConfig(
                num_workers=job.num_workers, use_gpu=use_gpu, resources_per_worker={"CPU": cpus}
            ),
            run_config=RunConfig(
                name=RUN_NAME, storage_path=storage,
                checkpoint_config=CheckpointConfig(
                    num_to_keep=job.keep_checkpoints, checkpoint_score_attribute="cer",
                    checkpoint_score_order="min",
                ),
            ),
        )
        result = trainer.fit()
    finally:
        if started:
            import ray

            ray.shutdown()
    if result.error is not None:
        raise result.error
    best = _best_checkpoint(result)
    if best is None:
        raise RuntimeError(f"training produced no checkpoint under {storage}")
    report = _export(best, result.checkpoint, out, job, kind, vocab, total, trainable, use_gpu,
                     len(train_rows), len(eval_rows), time.perf_counter() - t0)
    return report.to_dict()


def _best_checkpoint(result: Any) -> Any:
    scored = [(m.get("cer", float("inf")), -int(m.get("step", 0)), c) for c, m in (result.best_checkpoints or [])]
    scored = [s for s in scored if not math.isnan(s[0])]
    if not scored:
        return result.checkpoint
    return min(scored, key=lambda s: (s[0], s[1]))[2]


def _export(best: Any, latest: Any, out: str, job: FinetuneJob, kind: str, vocab: dict[str, int], total: int,
            trainable: int, use_gpu: bool, n_train: int, n_eval: int, wall_s: float) -> FinetuneReport:
    """Copy the best checkpoint's HF files to ``out`` and write ``finetune.json``."""
    with best.as_directory() as d:
        for name in os.listdir(d):
            if name not in TRAINING_FILES and os.path.isfile(os.path.join(d, name)):
                shutil.copy2(os.path.join(d, name), os.path.join(out, name))
        with open(os.path.join(d, STATE_FILE), encoding="utf-8") as fh:
            best_state = json.load(fh)
    last_state = best_state
    if latest is not None:
        with latest.as_directory() as d, open(os.path.join(d, STATE_FILE), encoding="utf-8") as fh:
            last_state = json.load(fh)
    best_point = best_state["curve"][-1]
    data = last_state.get("data", {})
    curve = last_state["curve"]
    hours = float(last_state["audio_s"]) / 3600
    train_wall = float(last_state["train_wall_s"])
    report = FinetuneReport(
        out=out, model_source=job.base or f"from_config:{job.from_config}", vocab=kind, vocab_size=len(vocab),
        parameters=total, trainable_parameters=trainable, num_workers=job.num_workers, use_gpu=use_gpu,
        precision=job.precision, train_utterances=int(data.get("train_utterances", n_train)),
        train_hours=float(data.get("train_hours", 0.0)), eval_utterances=int(data.get("eval_utterances", n_eval)),
        resumed_from_step=int(last_state.get("resumed_from_step", 0)), steps=int(last_state["step"]),
        best_step=int(best_point["step"]), best_cer=float(best_point["cer"]), best_wer=float(best_point["wer"]),
        best_by_set=best_point["by_set"], train_wall_s=train_wall, audio_hours_seen=hours,
        audio_hours_per_wall_hour=hours / (train_wall / 3600) if train_wall > 0 else 0.0,
        wall_s=wall_s, curve=curve, examples=best_state.get("examples", []),
    )
    with open(os.path.join(out, REPORT_NAME), "w", encoding="utf-8") as fh:
        json.dump(report.to_dict(), fh, ensure_ascii=False, indent=2)
    logger.info("best step %d: CER %.4f WER %.4f -> %s", report.best_step, report.best_cer, report.best_wer, out)
    return report
