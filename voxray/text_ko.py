"""Hangul <-> conjoining jamo, for CTC models whose output units are jamo.

A jamo vocabulary has 67 units (19 initials, 21 vowels, 27 finals) against ~2,000+ syllables in
everyday text, so every unit gets many training examples and unseen syllables stay reachable.
Models emit jamo in the Unicode *conjoining* block (U+1100-U+11FF), so recomposition is the
standard canonical composition; :func:`compose_units` adds the parts NFC lacks: it keeps frame
spans (for timestamps) and turns stray jamo (a vowel with no initial, say) into visible
compatibility jamo instead of leaving combining marks that render on the previous character.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Sequence
from typing import TypeVar

S_BASE, L_BASE, V_BASE, T_BASE = 0xAC00, 0x1100, 0x1161, 0x11A7
L_COUNT, V_COUNT, T_COUNT = 19, 21, 28
N_COUNT = V_COUNT * T_COUNT
S_COUNT = L_COUNT * N_COUNT

INITIALS = [chr(L_BASE + i) for i in range(L_COUNT)]
VOWELS = [chr(V_BASE + i) for i in range(V_COUNT)]
FINALS = [chr(T_BASE + i) for i in range(1, T_COUNT)]
JAMO = INITIALS + VOWELS + FINALS  # the 67 modern conjoining jamo


def _compat_map() -> dict[str, str]:
    out: dict[str, str] = {}
    for code in range(0x3131, 0x318F):
        d = unicodedata.normalize("NFKC", chr(code))
        if len(d) == 1 and 0x1100 <= ord(d) <= 0x11FF:
            out.setdefault(d, chr(code))
    # finals have no compatibility form of their own: use the matching initial's
    for t in FINALS:
        if t not in out:
            name = unicodedata.name(t).replace("HANGUL JONGSEONG ", "HANGUL LETTER ")
            try:
                out[t] = unicodedata.lookup(name)
            except KeyError:
                out[t] = t
    return out


_COMPAT = _compat_map()


def is_initial(ch: str) -> bool:
    return len(ch) == 1 and L_BASE <= ord(ch) < L_BASE + L_COUNT


def is_vowel(ch: str) -> bool:
    return len(ch) == 1 and V_BASE <= ord(ch) < V_BASE + V_COUNT


def is_final(ch: str) -> bool:
    return len(ch) == 1 and T_BASE < ord(ch) < T_BASE + T_COUNT


def is_jamo(ch: str) -> bool:
    return is_initial(ch) or is_vowel(ch) or is_final(ch)


def is_syllable(ch: str) -> bool:
    return len(ch) == 1 and S_BASE <= ord(ch) < S_BASE + S_COUNT


def decompose(text: str) -> str:
    """Hangul syllables -> conjoining jamo (initial, vowel, optional final); other text unchanged.

    Compatibility jamo (e.g. a lone ``ㅋ`` typed in chat) map to their conjoining form too, so
    every Hangul letter in a transcript becomes one of the 67 :data:`JAMO`.
    """
    out: list[str] = []
    for ch in unicodedata.normalize("NFC", text):
        if is_syllable(ch):
            s = ord(ch) - S_BASE
            out.append(chr(L_BASE + s // N_COUNT))
            out.append(chr(V_BASE + (s % N_COUNT) // T_COUNT))
            if s % T_COUNT:
                out.append(chr(T_BASE + s % T_COUNT))
        elif 0x3131 <= ord(ch) <= 0x318E:
            out.append(unicodedata.normalize("NFKC", ch))
        else:
            out.append(ch)
    return "".join(out)


U = TypeVar("U")


def compose_units(units: Sequence[tuple[str, U, U]]) -> list[tuple[str, U, U]]:
    """Merge (token, start, end) units into syllables: ``L V [T]`` -> one unit spanning all three.

    Tokens that are not jamo pass through; jamo that do not form a syllable become compatibility
    jamo (visible letters). Used by CTC decoding so text and char/word timestamps are syllables.
    """
    out: list[tuple[str, U, U]] = []
    i, n = 0, len(units)
    while i < n:
        tok, start, end = units[i]
        if is_initial(tok) and i + 1 < n and is_vowel(units[i + 1][0]):
            code = S_BASE + ((ord(tok) - L_BASE) * V_COUNT + ord(units[i + 1][0]) - V_BASE) * T_COUNT
            end, i = units[i + 1][2], i + 2
            # a final belongs here unless it is really the next syllable's initial (CTC never
            # emits a final as an initial: finals and initials are distinct code points)
            if i < n and is_final(units[i][0]):
                code += ord(units[i][0]) - T_BASE
                end, i = units[i][2], i + 1
            out.append((chr(code), start, end))
            continue
        out.append((_COMPAT.get(tok, tok) if is_jamo(tok) else tok, start, end))
        i += 1
    return out


def compose(text: str | Iterable[str]) -> str:
    """Conjoining jamo -> Hangul syllables (NFC text); stray jamo become compatibility letters."""
    chars = list(text)
    return "".join(t for t, _, _ in compose_units([(c, 0, 0) for c in chars]))


def has_jamo(tokens: Iterable[str]) -> bool:
    """True when a CTC vocabulary spells Korean in conjoining jamo (so output needs :func:`compose`)."""
    return any(is_jamo(t) for t in tokens)


def cer_ignoring_spaces(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate over a set (jiwer) with spaces removed: Korean word spacing is loose
    (particles, compounds), so a spacing slip should not count like a wrong syllable."""
    import jiwer

    return float(jiwer.cer([r.replace(" ", "") for r in refs], [h.replace(" ", "") or "-" for h in hyps]))
