"""``voxray say TEXT -o FILE``: Kokoro in-process (no Ray), for one text."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from voxray.cli.options import add_options, add_tts_model_flag, collect_options
from voxray.errors import InputError
from voxray.tts.config import TTSOptions

FORMATS = ("wav", "flac", "ogg", "mp3")


def _read_say_text(args: argparse.Namespace) -> str:
    if args.file:
        if args.file == "-":
            return sys.stdin.read()
        try:
            with open(args.file, encoding="utf-8") as fh:
                return fh.read()
        except FileNotFoundError as exc:
            raise InputError(f"text file not found: {args.file}") from exc
    if args.text:
        return " ".join(args.text)
    if not sys.stdin.isatty():
        return sys.stdin.read()
    raise InputError('nothing to say: give text (voxray say "Hello"), -f FILE, or pipe text on stdin')


def _cmd_say(args: argparse.Namespace) -> int:
    from voxray.audio import encode_audio, write_audio
    from voxray.tts.pipeline import TTSPipeline

    text = _read_say_text(args)
    options = TTSOptions(**collect_options(args).get("tts", {}))  # cli.main reports invalid options
    fmt = args.format or (os.path.splitext(args.output)[1].lstrip(".").lower() if args.output != "-" else "") or "wav"
    if fmt not in FORMATS:
        raise InputError(f"unsupported format {fmt!r}: choose wav, flac, ogg or mp3")
    result = TTSPipeline(options).synthesize(text)
    if args.output == "-":
        sys.stdout.buffer.write(encode_audio(result.audio, result.sample_rate, fmt))
        sys.stdout.buffer.flush()
        return 0
    write_audio(args.output, result.audio, result.sample_rate, fmt)
    print(
        f"{args.output}: {result.duration_s:.2f} s, {len(result.chunks)} chunk(s), voice {options.voice}, "
        f"lang {options.lang}",
        file=sys.stderr,
    )
    return 0


def register(subparsers: Any) -> None:
    say = subparsers.add_parser(
        "say", help="speak text into an audio file with Kokoro (in-process, no Ray)",
        description='Speak TEXT (or -f FILE, or stdin) into -o FILE. Example: voxray say "Hello" -o hello.wav',
    )
    say.add_argument("text", nargs="*", help="text to speak (default: -f FILE or stdin)")
    say.add_argument("-f", "--file", help="read the text from this file ('-' for stdin)")
    say.add_argument(
        "-o", "--output", default="speech.wav", help="audio file to write, '-' for stdout (default: speech.wav)"
    )
    say.add_argument("--format", choices=list(FORMATS), help="audio format (default: from -o, else wav)")
    add_options(say, TTSOptions, prefix="tts__", skip=("model",))
    add_tts_model_flag(say, TTSOptions.model_fields["model"].description or "")
    say.set_defaults(_handler=_cmd_say)
