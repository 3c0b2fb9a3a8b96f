"""``voxray export asr --model M --out DIR [--int8] [--fp16]``: an ONNX model dir for ``--backend onnx``.

``voxray export tts --out FILE [--fp16]``: Kokoro as a batched, defect-free ONNX graph (voxray.tts.export).
"""

from __future__ import annotations

import argparse
from typing import Any

from voxray.cli.options import add_options, collect_options, print_json


def _cmd_export_asr(args: argparse.Namespace) -> int:
    from voxray.encoder.onnx_export import ExportOptions, export_asr

    options = ExportOptions(**collect_options(args))
    manifest = export_asr(options)
    print_json({
        "out": options.out, "source": manifest["source"], "graphs": manifest["graphs"],
        "parity_vs_torch_float32": manifest["parity"], "export_s": manifest["export_s"],
        "use": f"--model {options.out} (backend and dtype auto: onnx, "
        f"{'int8' if 'int8' in manifest['graphs'] else 'float32'} on CPU)",
    })
    return 0


def _cmd_export_tts(args: argparse.Namespace) -> int:
    from voxray.tts.export import TTSExportOptions, export_tts

    options = TTSExportOptions(**collect_options(args))
    manifest = export_tts(options)
    print_json({**manifest, "use": f"--tts-model {options.out} (batched on onnxruntime; no output repair needed)"})
    return 0


def register(subparsers: Any) -> None:
    from voxray.encoder.onnx_export import ExportOptions

    p = subparsers.add_parser(
        "export", help="export a model to ONNX for the onnxruntime backend",
        description="Export a model to ONNX (dynamo exporter, dynamic batch and time) into a complete model dir.",
    )
    kinds = p.add_subparsers(dest="_kind", required=True)
    asr = kinds.add_parser(
        "asr", help="a wav2vec2 CTC model: conv-features and encoder graphs, optional int8/fp16",
        description="Write DIR with the ONNX graphs, the processor files and onnx_export.json (parity vs torch). "
        "`voxray transcribe|embed|serve --model DIR` then run on onnxruntime.",
    )
    add_options(asr, ExportOptions)
    asr.set_defaults(_handler=_cmd_export_asr)
    # --- tts (voxray.tts.export): kept separate from the ASR subcommand above
    from voxray.tts.export import TTSExportOptions

    tts = kinds.add_parser(
        "tts", help="Kokoro-82M: one ONNX graph with a dynamic batch axis, durations output, correct level",
        description="Write FILE: Kokoro traced from the torch model (weights from the embedded int8 graph by "
        "default), with dynamic batch and per-item lengths, float speed, a fixed inverse STFT (no 1.5x level, "
        "no click) and a durations output. `voxray say|synthesize|serve --tts-model FILE` then batch on it.",
    )
    add_options(tts, TTSExportOptions)
    tts.set_defaults(_handler=_cmd_export_tts)
