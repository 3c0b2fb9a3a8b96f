"""TTS subcommands: ``voxray say``, ``voxray voices`` and ``voxray synthesize`` (the Ray job).

Flags come from :class:`voxray.tts.config.TTSOptions` / ``SynthesizeJob`` via ``add_options``;
only ``--tts-model`` (the ``model`` field, renamed so it cannot be mistaken for the ASR model)
and the input/output flags of ``say`` are declared here.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from voxray.errors import InputError
from voxray.tts.config import TTSOptions


def _add_tts_flags(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    from voxray.cli import add_options

    add_options(p, TTSOptions, prefix="tts__", skip=("model", *skip))
    p.add_argument("--tts-model", dest="tts__model", default=None, help=TTSOptions.model_fields["model"].description)


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
    from voxray.cli import collect_options
    from voxray.tts.pipeline import TTSPipeline

    text = _read_say_text(args)
    options = TTSOptions(**collect_options(args).get("tts", {}))  # cli.main reports invalid options
    fmt = args.format or (os.path.splitext(args.output)[1].lstrip(".").lower() if args.output != "-" else "") or "wav"
    if fmt not in ("wav", "flac", "ogg", "mp3"):
        raise InputError(f"unsupported format {fmt!r}: choose wav, flac, ogg or mp3")
    pipe = TTSPipeline(options)
    result = pipe.synthesize(text)
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


def _cmd_voices(args: argparse.Namespace) -> int:
    from voxray.cli import print_json
    from voxray.tts.g2p import LANGUAGES
    from voxray.tts.voices import VoiceBank

    bank = VoiceBank(extra=args.voices or [])
    voices = bank.describe()
    languages = [{"code": lang.code, "g2p": lang.backend, "note": lang.note} for lang in LANGUAGES.values()]
    if args.json:
        print_json({"voices": voices, "languages": languages})
        return 0
    print("voices (blend with e.g. 'jf_alpha(2)+jm_kumo(1)'):")
    for v in voices:
        print(f"  {v['name']:<18} trained on {v['trained_lang']:<6} {v['gender']}")
    print("languages (--lang):")
    for lang in languages:
        print(f"  {lang['code']:<6} {lang['note']}")
    return 0


def register(subparsers: Any) -> None:
    """Add ``say``, ``voices`` and ``synthesize`` to the ``voxray`` CLI."""
    say = subparsers.add_parser(
        "say", help="speak text into an audio file with Kokoro (in-process, no Ray)",
        description='Speak TEXT (or -f FILE, or stdin) into -o FILE. Example: voxray say "Hello" -o hello.wav',
    )
    say.add_argument("text", nargs="*", help="text to speak (default: -f FILE or stdin)")
    say.add_argument("-f", "--file", help="read the text from this file ('-' for stdin)")
    say.add_argument(
        "-o", "--output", default="speech.wav", help="audio file to write, '-' for stdout (default: speech.wav)"
    )
    say.add_argument(
        "--format", choices=["wav", "flac", "ogg", "mp3"], help="audio format (default: from -o, else wav)"
    )
    _add_tts_flags(say)
    say.set_defaults(_handler=_cmd_say)

    voices = subparsers.add_parser("voices", help="list the Kokoro voices and languages available")
    voices.add_argument("--voices", nargs="+", help=TTSOptions.model_fields["voices"].description)
    voices.add_argument("--json", action="store_true", help="print JSON")
    voices.set_defaults(_handler=_cmd_voices)

    from voxray.jobs.synthesize import register as register_synthesize

    register_synthesize(subparsers)
