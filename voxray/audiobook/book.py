"""Books in: .txt, .md and .epub -> chapters of paragraphs; then chunks, planned once in the driver.

Chunk ids are ``CCC-PPPPP`` (chapter index, position in the chapter), so a rerun over the same
book plans the same ids. The file a chunk is stored under adds a hash of its text and of the
synthesis settings (:func:`chunk_key`), so a rerun after editing the book or changing the voice
never reuses stale audio.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from voxray.errors import InputError, InputNotFoundError, TextError
from voxray.text import split_sentences

logger = logging.getLogger("voxray.audiobook")

BOOK_EXTENSIONS = (".txt", ".md", ".markdown", ".epub")
_HAS_WORD = re.compile(r"\w")  # "* * *" scene breaks and rules are pauses, not speech


@dataclass
class Chapter:
    """One chapter: its title, its paragraphs (plain text, in order) and where it came from."""

    index: int
    title: str
    paragraphs: list[str]
    source: str = ""

    @property
    def chars(self) -> int:
        return sum(len(p) for p in self.paragraphs)


@dataclass
class Book:
    title: str
    author: str
    chapters: list[Chapter]
    source: str

    @property
    def chars(self) -> int:
        return sum(c.chars for c in self.chapters)


# ------------------------------------------------------------------ reading
def _clean(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _keep(paragraphs: list[str]) -> list[str]:
    return [p for p in (_clean(x) for x in paragraphs) if _HAS_WORD.search(p)]


def _read_text(path: str) -> str:
    if "://" not in path and not os.path.exists(path):
        raise InputNotFoundError(f"book not found: {path}")
    import fsspec

    with fsspec.open(path, "r", encoding="utf-8-sig") as fh:
        return fh.read()


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path.rstrip("/")))[0]


def _finish(title: str, author: str, chapters: list[Chapter], source: str) -> Book:
    chapters = [c for c in chapters if c.paragraphs]
    for i, chapter in enumerate(chapters):
        chapter.index = i
    if not chapters:
        raise TextError(f"{source}: the book has no text to read")
    return Book(title=title, author=author, chapters=chapters, source=source)


def _markdown_parser() -> Any:
    """CommonMark, with indented code blocks off: an indented paragraph in a book is prose."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark").disable("code")


def _inline_text(token: Any) -> str:
    """Plain text of an inline token: emphasis, links and code spans keep their text; images and
    inline HTML (comments included) are dropped; line breaks become spaces."""
    parts: list[str] = []
    for child in token.children or []:
        if child.type in ("text", "code_inline"):
            parts.append(child.content)
        elif child.type in ("softbreak", "hardbreak"):
            parts.append(" ")
    return "".join(parts)


def _html_text(html: str) -> str:
    """The text of a raw HTML block, without its tags, comments, scripts and styles."""
    import lxml.html
    from lxml.etree import ParserError

    try:
        root = lxml.html.fragment_fromstring(html, create_parent="div")
    except ParserError:  # nothing but a declaration (<!DOCTYPE ...>)
        return ""
    for bad in root.xpath("//comment() | //script | //style"):
        bad.drop_tree()
    return root.text_content()


def _fence_closed(tok: Any, lines: list[str]) -> bool:
    """Whether a fence token ends with its closing fence (an unclosed one runs to the end of its block)."""
    start, end = tok.map
    last = lines[end - 1].lstrip(" \t>").rstrip() if end - start >= 2 and end <= len(lines) else ""
    return last.startswith(tok.markup) and not last.strip(tok.markup[0])


def _markdown_blocks(text: str) -> list[tuple[int, int, str]]:
    """(heading level or 0, first line (0-based), plain text) of every text block, in order.

    Headings count only at the top level (one inside a quote or a list is a paragraph); fenced
    code is not read (but an unclosed fence's text is); each paragraph, list item paragraph or raw
    HTML block is one block.
    """
    tokens = _markdown_parser().parse(text)
    blocks: list[tuple[int, int, str]] = []
    lines = re.split(r"\r\n?|\n", text)  # as markdown-it counts lines
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            blocks.append((int(tok.tag[1:]) if tok.level == 0 else 0, tok.map[0], _inline_text(tokens[i + 1])))
        elif tok.type == "inline" and tokens[i - 1].type != "heading_open":
            blocks.append((0, tok.map[0], _inline_text(tok)))
        elif tok.type == "html_block" and tok.content.strip():
            blocks.append((0, tok.map[0], _html_text(tok.content)))
        elif tok.type == "fence" and not _fence_closed(tok, lines):
            # a stray fence in a book is a typo, not code: read what it swallowed rather than drop it
            logger.warning("line %d: a code fence (%s) is never closed: reading the text after it as prose",
                           tok.map[0] + 1, tok.markup)
            for k, para in enumerate(p for p in re.split(r"\n\s*\n", tok.content) if p.strip()):
                blocks.append((0, tok.map[0] + 1 + k, " ".join(para.split())))
    return blocks


def parse_markdown(text: str, source: str = "book.md") -> Book:
    """Chapters at headings. A single ``#`` heading above ``##`` headings is the book's title."""
    blocks = _markdown_blocks(text)
    levels = [lvl for lvl, _, _ in blocks if lvl]
    title = _stem(source)
    split_level = min(levels, default=0)
    if split_level and levels.count(split_level) == 1 and any(lvl > split_level for lvl in levels):
        title = next(t for lvl, _, t in blocks if lvl == split_level)
        split_level = min(lvl for lvl in levels if lvl > split_level)
    name = os.path.basename(source)
    chapters: list[Chapter] = []
    current: Chapter | None = None
    for level, line, block in blocks:
        if level and level <= split_level:
            if level < split_level:
                continue  # the book title line
            heading = _clean(block)
            current = Chapter(len(chapters), heading, _keep([heading]), f"{name}#L{line + 1}")
            chapters.append(current)
            continue
        if current is None:  # text before the first chapter heading
            current = Chapter(len(chapters), title, [], f"{name}#L1")
            chapters.append(current)
        current.paragraphs.extend(_keep([block]))  # a sub-heading stays inside the chapter as its own paragraph
    return _finish(title, "", chapters, source)


_NUMBER_WORD = (r"(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|fifteen"
                r"|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety"
                r"|first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|last)")
_TXT_HEADING = re.compile(
    rf"^(?:(?:chapter|book|part|section|canto|letter)\s+(?:[0-9]+|[ivxlcdm]+|(?:the\s+)?{_NUMBER_WORD}(?:-{_NUMBER_WORD})?)"
    r"(?:[.:]?$|[.:]?\s+\S.{0,80}$)"
    r"|(?-i:[IVXLCDM]+)(?:[.:]?$|[.:]\s+\S.{0,60}$)"
    r"|(?:prologue|epilogue|preface|introduction)\.?$)",
    re.IGNORECASE,
)


def parse_text(text: str, source: str = "book.txt") -> Book:
    """Paragraphs are blank-line separated; a short line alone in its paragraph that looks like
    "CHAPTER IV", "Part Two: ..." or a Roman numeral starts a chapter. No such line: one chapter."""
    paragraphs = [_clean(p) for p in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n"))]
    chapters: list[Chapter] = []
    title = _stem(source)
    line_no = 1
    offsets = []
    for raw in re.split(r"(\n[ \t]*\n)", text.replace("\r\n", "\n")):
        offsets.append(line_no)
        line_no += raw.count("\n")
    starts = offsets[0::2]
    for para, start in zip(paragraphs, starts, strict=False):
        if not _HAS_WORD.search(para):
            continue
        if len(para) <= 90 and _TXT_HEADING.match(para):
            chapters.append(Chapter(len(chapters), para.rstrip("."), [para], f"{os.path.basename(source)}#L{start}"))
        elif chapters:
            chapters[-1].paragraphs.append(para)
        else:
            chapters.append(Chapter(0, title, [para], f"{os.path.basename(source)}#L{start}"))
    return _finish(title, "", chapters, source)


# ------------------------------------------------------------------ EPUB
_BLOCKS = {"p", "h1", "h2", "h3", "h4", "h5", "h6", "li", "blockquote", "pre", "dd", "dt", "td", "th",
           "figcaption", "div", "section", "article", "aside"}
_HEADINGS = ("h1", "h2", "h3")


def _local(tag: Any) -> str:
    return tag.rsplit("}", 1)[-1].lower() if isinstance(tag, str) else ""


def html_paragraphs(content: bytes) -> tuple[list[str], str | None]:
    """Text blocks of an XHTML document in order, and its first h1-h3 heading (or None).

    A block is a block-level element holding no other block (nested divs are read once).
    Scripts, styles and ruby annotations are skipped.
    """
    import lxml.html

    if not content.strip():
        return [], None
    root = lxml.html.fromstring(content)
    for bad in root.xpath("//*[local-name()='script' or local-name()='style' or local-name()='rt' "
                          "or local-name()='head']"):
        bad.drop_tree()
    paragraphs: list[str] = []
    heading: str | None = None
    for el in root.iter():
        name = _local(el.tag)
        if name not in _BLOCKS:
            continue
        if any(_local(d.tag) in _BLOCKS for d in el.iterdescendants()):
            continue
        text = _clean(el.text_content())
        if not _HAS_WORD.search(text):
            continue
        if heading is None and name in _HEADINGS:
            heading = text
        paragraphs.append(text)
    return paragraphs, heading


def _toc_titles(toc: Any) -> dict[str, str]:
    """File name (no anchor) -> the first TOC title pointing into it, in TOC order."""
    from ebooklib import epub

    titles: dict[str, str] = {}

    def walk(entries: Any) -> None:
        for entry in entries:
            if isinstance(entry, tuple | list):  # (Section, [children])
                section, children = entry[0], entry[1] if len(entry) > 1 else []
                href = getattr(section, "href", None)
                if href:
                    titles.setdefault(href.split("#", 1)[0], _clean(section.title or ""))
                walk(children)
            elif isinstance(entry, epub.Link | epub.Section):
                href = getattr(entry, "href", None)
                if href:
                    titles.setdefault(href.split("#", 1)[0], _clean(entry.title or ""))

    walk(toc)
    return titles


def _meta(book: Any, name: str) -> str:
    values = book.get_metadata("DC", name)
    return _clean(values[0][0]) if values and values[0] and values[0][0] else ""


def parse_epub(path: str, source: str | None = None) -> Book:
    """Chapters in spine order, titled from the navigation (EPUB3 nav or NCX), else the first
    h1-h3. A spine document the TOC does not name and that has no heading continues the
    previous chapter (split chapter files); one the TOC names starts a chapter. Chapters are
    per file: a TOC entry pointing at an anchor inside a file names the whole file."""
    try:
        import ebooklib
        from ebooklib import epub
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise InputError("reading EPUB needs ebooklib: pip install ebooklib") from exc
    source = source or path
    try:
        book = epub.read_epub(path, options={"ignore_ncx": False})
    except Exception as exc:
        raise InputError(f"{source}: not a readable EPUB ({type(exc).__name__}: {exc})") from exc
    toc = _toc_titles(book.toc)
    chapters: list[Chapter] = []
    for idref, _linear in book.spine:
        item = book.get_item_with_id(idref)
        if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT or isinstance(item, epub.EpubNav):
            continue
        name = item.get_name()
        paragraphs, heading = html_paragraphs(item.get_content())
        if not paragraphs:
            continue
        title = toc.get(name) or toc.get(os.path.basename(name))
        if title is None and heading is None and chapters:
            chapters[-1].paragraphs.extend(paragraphs)
            continue
        chapters.append(Chapter(len(chapters), title or heading or f"Chapter {len(chapters) + 1}", paragraphs, name))
    return _finish(_meta(book, "title") or _stem(source), _meta(book, "creator"), chapters, source)


def read_book(path: str, title: str | None = None, author: str | None = None) -> Book:
    """Read ``path`` (local or fsspec URL) by extension; ``title``/``author`` override metadata."""
    lower = path.lower()
    if not lower.endswith(BOOK_EXTENSIONS):
        raise InputError(f"{path}: give a book as .txt, .md or .epub")
    if lower.endswith(".epub"):
        if "://" in path:
            import fsspec

            with tempfile.TemporaryDirectory() as tmp:
                local = os.path.join(tmp, "book.epub")
                with fsspec.open(path, "rb") as src, open(local, "wb") as dst:
                    dst.write(src.read())
                book = parse_epub(local, source=path)
        else:
            if not os.path.exists(path):
                raise InputNotFoundError(f"book not found: {path}")
            book = parse_epub(path)
    elif lower.endswith((".md", ".markdown")):
        book = parse_markdown(_read_text(path), source=path)
    else:
        book = parse_text(_read_text(path), source=path)
    if title:
        book.title = title
    if author:
        book.author = author
    return book


# ------------------------------------------------------------------ chunk planning
@dataclass(frozen=True)
class BookChunk:
    """One unit of parallel synthesis and of resume: whole sentences of one paragraph."""

    id: str
    chapter: int
    position: int
    paragraph: int
    text: str
    paragraph_end: bool  # last chunk of its paragraph: a paragraph pause follows

    def key(self, settings: str) -> str:
        """Storage name: id plus a hash of text and settings (stale audio is never reused)."""
        digest = hashlib.sha1(f"{settings}\n{self.text}".encode()).hexdigest()[:10]
        return f"{self.id}-{digest}"


def chunk_id(chapter: int, position: int) -> str:
    return f"{chapter:03d}-{position:05d}"


def _pack(sentences: list[str], limit: int) -> Iterator[str]:
    buf: list[str] = []
    size = 0
    for s in sentences:
        if buf and size + 1 + len(s) > limit:
            yield " ".join(buf)
            buf, size = [], 0
        buf.append(s)
        size += len(s) + (1 if size else 0)
    if buf:
        yield " ".join(buf)


def plan_chunks(book: Book, chunk_chars: int = 400) -> list[BookChunk]:
    """Cut every paragraph into chunks of whole sentences up to ``chunk_chars`` (a longer
    sentence is one chunk; the TTS pipeline splits it further within Kokoro's token limit)."""
    chunks: list[BookChunk] = []
    for chapter in book.chapters:
        position = 0
        for p_index, para in enumerate(chapter.paragraphs):
            try:
                sentences = split_sentences(para)
            except TextError:
                continue
            pieces = list(_pack(sentences, chunk_chars))
            for k, text in enumerate(pieces):
                chunks.append(BookChunk(chunk_id(chapter.index, position), chapter.index, position, p_index, text,
                                    k == len(pieces) - 1))
                position += 1
    return chunks


def settings_fingerprint(tts: dict[str, Any]) -> str:
    """The synthesis settings that change a chunk's audio, as a stable string."""
    keys = ("model", "voices", "voice", "lang", "speed", "max_tokens", "fade_in_ms", "level_fix")
    return json.dumps({k: tts.get(k) for k in keys}, sort_keys=True, default=str)


@dataclass
class ChunkRecord:
    """What a synthesised (or failed) chunk left on disk, read back by the assembler."""

    id: str
    samples: int = 0
    sentences: list[tuple[float, float, str]] = field(default_factory=list)
    error: str | None = None
