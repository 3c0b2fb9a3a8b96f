"""``voxray voices``: the Kokoro voices and languages available."""

from __future__ import annotations

import argparse
from typing import Any

from voxray.cli.options import print_json
from voxray.tts.config import TTSOptions


def _cmd_voices(args: argparse.Namespace) -> int:
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
    voices = subparsers.add_parser("voices", help="list the Kokoro voices and languages available")
    voices.add_argument("--voices", nargs="+", help=TTSOptions.model_fields["voices"].description)
    voices.add_argument("--json", action="store_true", help="print JSON")
    voices.set_defaults(_handler=_cmd_voices)
