"""Audiobook job: book parsing and chunk planning (fast), and end-to-end runs on real Kokoro,
real Ray and real ffmpeg (slow): an EPUB built here with ebooklib, resume after an interrupted
run, and a chunk whose synthesis fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from voxray.audiobook.assemble import safe_title, srt_time
from voxray.audiobook.book import chunk_id, parse_markdown, parse_text, plan_chunks, read_book, settings_fingerprint
from voxray.jobs.audiobook import AudiobookJob

ROOT = Path(__file__).resolve().parents[1]

CHAPTERS = [
    ("The Harbour", ["Boats rocked in the harbour.", "Gulls cried over the grey water."]),
    ("The Hill", ["A narrow path climbed the hill."]),
    ("The Night", ["Then the lamps were lit. It was night."]),
]


def make_epub(path: Path, chapters: list[tuple[str, list[str]]], title: str = "A Small Book",
              author: str = "Ada Writer") -> Path:
    """An EPUB3 with a nav document, an NCX and one XHTML file per chapter (TOC titles differ
    from the in-text headings, so the test can tell where the chapter titles came from)."""
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("voxray-test-book")
    book.set_title(title)
    book.set_language("en")
    book.add_author(author)
    items = []
    for i, (name, paras) in enumerate(chapters):
        item = epub.EpubHtml(title=name, file_name=f"text/ch{i + 1}.xhtml", lang="en")
        item.content = (f"<html><body><section><h2>{name}</h2>"
                        + "".join(f"<p>{p}</p>" for p in paras) + "</section></body></html>")
        book.add_item(item)
        items.append(item)
    book.toc = [epub.Link(item.file_name, f"{i + 1}. {name}", f"ch{i}")
                for i, (item, (name, _)) in enumerate(zip(items, chapters, strict=True))]
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    book.spine = ["nav", *items]
    epub.write_epub(str(path), book)
    return path


def parse_srt(text: str) -> list[tuple[float, float, str]]:
    def secs(stamp: str) -> float:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000

    cues = []
    for n, block in enumerate(text.strip().split("\n\n"), 1):
        lines = block.split("\n")
        assert lines[0] == str(n), block
        m = re.fullmatch(r"(\S+) --> (\S+)", lines[1])
        assert m, block
        cues.append((secs(m.group(1)), secs(m.group(2)), " ".join(lines[2:])))
    return cues


def decode(path: str | Path) -> np.ndarray:
    import av

    with av.open(str(path)) as c:
        return np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])


# ------------------------------------------------------------------ fast: reading and planning
def test_epub_chapters_titles_from_toc(tmp_path):
    book = read_book(str(make_epub(tmp_path / "b.epub", CHAPTERS)))
    assert (book.title, book.author) == ("A Small Book", "Ada Writer")
    assert [c.title for c in book.chapters] == ["1. The Harbour", "2. The Hill", "3. The Night"]  # from the nav
    assert book.chapters[0].paragraphs == ["The Harbour", *CHAPTERS[0][1]]  # the nav doc itself is not read
    assert [c.source for c in book.chapters] == ["text/ch1.xhtml", "text/ch2.xhtml", "text/ch3.xhtml"]
    over = read_book(str(tmp_path / "b.epub"), title="Other", author="Someone")
    assert (over.title, over.author) == ("Other", "Someone")


def test_markdown_title_and_chapters():
    md = ("# My Book\n\n<!-- a note -->\n\n## One\n\nFirst *line* of\nthe [first](http://x) para.\n\n"
          "* * *\n\nSecond para.\n\n### A sub-heading\n\nMore.\n\n## Two\n\n```\ncode is skipped\n```\n\nLast.\n")
    book = parse_markdown(md, "dir/my.md")
    assert book.title == "My Book"
    assert [c.title for c in book.chapters] == ["One", "Two"]
    assert book.chapters[0].paragraphs == ["One", "First line of the first para.", "Second para.", "A sub-heading",
                                           "More."]
    assert book.chapters[1].paragraphs == ["Two", "Last."]
    assert book.chapters[0].source == "my.md#L5" and book.chapters[1].source == "my.md#L18"


def test_text_chapter_heuristics():
    txt = "Front words.\n\nCHAPTER I.\n\nIt began.\n\nStill going.\n\nChapter Two: The Road\n\nIt ended.\n"
    book = parse_text(txt, "novel.txt")
    assert [c.title for c in book.chapters] == ["novel", "CHAPTER I", "Chapter Two: The Road"]
    assert book.chapters[1].paragraphs == ["CHAPTER I.", "It began.", "Still going."]
    plain = parse_text("Just one paragraph.\n\nAnd another.", "plain.txt")
    assert [c.title for c in plain.chapters] == ["plain"]


def test_plan_is_stable_and_packs_whole_sentences():
    para = " ".join(f"Sentence number {i} is here." for i in range(30))
    book = parse_text(f"CHAPTER 1\n\n{para}\n\nShort one.", "x.txt")
    a, b = plan_chunks(book, 120), plan_chunks(book, 120)
    assert a == b and [c.id for c in a] == [chunk_id(0, i) for i in range(len(a))]
    assert all(len(c.text) <= 120 for c in a)
    assert " ".join(c.text for c in a if c.paragraph == 1) == para  # nothing lost, nothing cut mid-sentence
    assert [c.paragraph_end for c in a].count(True) == 3
    s1, s2 = settings_fingerprint({"voice": "jf_alpha"}), settings_fingerprint({"voice": "jm_kumo"})
    assert a[1].key(s1) == b[1].key(s1) != a[1].key(s2)


def test_names_times_and_spec():
    assert safe_title('A/B: "C"?') == "A B C" and safe_title("...") == "Chapter"
    assert srt_time(3723.4567) == "01:02:03,457"
    from voxray.jobs.specs import parse_spec

    spec_path = ROOT / "jobs" / "audiobook.yaml"
    job = parse_spec(spec_path)
    assert isinstance(job, AudiobookJob) and job.job == "audiobook" and (ROOT / job.book).exists()
    assert read_book(str(ROOT / job.book)).chars >= 20_000


# ------------------------------------------------------------------ slow: real Ray, Kokoro, ffmpeg
def _job(book: Path, out: Path, **kw) -> AudiobookJob:
    return AudiobookJob(book=str(book), out=str(out), progress=False,
                        resources={"actors": 2, "cpus_per_actor": 0.5, "threads_per_actor": 1, "rows_per_call": 1},
                        **kw)


@pytest.fixture(scope="module")
def full_run(ray_cluster, tmp_path_factory):
    """The EPUB book, uninterrupted, as an .m4b (shared by the tests below)."""
    from voxray.jobs.audiobook import run_audiobook

    tmp = tmp_path_factory.mktemp("audiobook")
    book = make_epub(tmp / "book.epub", CHAPTERS)
    report = run_audiobook(_job(book, tmp / "full"))
    return book, tmp, report


@pytest.mark.slow
def test_epub_to_m4b(full_run):
    import av

    _, tmp, report = full_run
    out = tmp / "full"
    extra = report["extra"]
    assert extra["complete"] and report["errors"] == 0 and extra["failed_chunks"] == []
    assert extra["chunks"] == 7 and extra["chapters"] == 3 and report["inputs"] == 7
    names = ["01 - 1. The Harbour.m4a", "02 - 2. The Hill.m4a", "03 - 3. The Night.m4a"]
    assert extra["chapter_files"] == names and all((out / n).exists() for n in names)
    meta = json.loads((out / "chapters.json").read_text())
    chapters = meta["chapters"]
    assert [c["title"] for c in chapters] == ["1. The Harbour", "2. The Hill", "3. The Night"]
    assert [c["source"] for c in chapters] == ["text/ch1.xhtml", "text/ch2.xhtml", "text/ch3.xhtml"]
    # durations add up: contiguous chapters, their sum is the book, each file as long as its entry
    assert chapters[0]["start_s"] == 0
    for a, b in zip(chapters, chapters[1:], strict=False):
        assert b["start_s"] == pytest.approx(a["end_s"])
    total = sum(c["duration_s"] for c in chapters)
    assert total == pytest.approx(meta["duration_s"]) == pytest.approx(report["audio_s"])
    for c in chapters:
        assert len(decode(out / c["file"])) / 24000 == pytest.approx(c["duration_s"], abs=0.05)
    # every chunk's audio is in its chapter, plus pauses: 0.6 s between paragraphs, 2 s after chapters 1-2
    samples = {p.stem: np.load(p).shape[0] for p in (out / "chunks").glob("*.npy")}
    by_chapter = [sum(n for k, n in samples.items() if k.startswith(f"{i:03d}-")) / 24000 for i in range(3)]
    pauses = [2 * 0.6 + 2.0, 1 * 0.6 + 2.0, 1 * 0.6]
    for c, speech, pause in zip(chapters, by_chapter, pauses, strict=True):
        assert c["duration_s"] == pytest.approx(speech + pause, abs=1e-6)
    # the .m4b: one file, three chapter markers with the right titles and times, title/author tags
    with av.open(extra["m4b"]) as c:
        marks = c.chapters()
        assert c.metadata["title"] == "A Small Book" and c.metadata["artist"] == "Ada Writer"
        assert c.duration / 1e6 == pytest.approx(total, abs=0.1)
    assert [m["metadata"]["title"] for m in marks] == [c["title"] for c in chapters]
    for m, c in zip(marks, chapters, strict=True):
        assert float(m["start"] * m["time_base"]) == pytest.approx(c["start_s"], abs=1e-3)
        assert float(m["end"] * m["time_base"]) == pytest.approx(c["end_s"], abs=1e-3)
    # subtitles: one cue per sentence, in order, times monotonic and inside the book
    cues = parse_srt((out / "subtitles.srt").read_text(encoding="utf-8"))
    texts = [t for _, _, t in cues]
    assert texts == ["The Harbour", *CHAPTERS[0][1], "The Hill", *CHAPTERS[1][1], "The Night",
                     "Then the lamps were lit.", "It was night."]
    for (s0, e0, _), (s1, _, _) in zip(cues, cues[1:], strict=False):
        assert s0 < e0 <= s1
    assert cues[-1][1] <= total + 1e-3
    run = json.loads((out / "run.json").read_text())
    assert run["extra"]["characters"] == sum(len(name) + sum(len(p) for p in paras) for name, paras in CHAPTERS)
    assert run["wall_s"] > 0 and run["extra"]["real_time_factor"] > 0


@pytest.mark.slow
def test_resume_after_interruption_is_identical(full_run):
    from voxray.audiobook.store import ChunkStore
    from voxray.jobs.audiobook import run_audiobook

    book, tmp, full = full_run
    out = tmp / "resumed"
    first = run_audiobook(_job(book, out, limit=3))  # "killed" after 3 chunks
    assert not first["extra"]["complete"] and first["processed"] == 3 and first["extra"]["chunks_pending"] == 4
    assert not list(out.glob("*.m4a")) and not (out / "chapters.json").exists()
    # a kill between a chunk's audio and its marker leaves an orphan .npy: it must be redone
    marker = sorted((out / "chunks").glob("*.json"))[-1]
    marker.unlink()
    assert len(ChunkStore(str(out / "chunks")).listing()[0]) == 2
    second = run_audiobook(_job(book, out))
    assert second["extra"]["complete"] and second["skipped_already_done"] == 2 and second["processed"] == 5
    assert second["extra"]["chapter_files"] == full["extra"]["chapter_files"]
    for name in full["extra"]["chapter_files"]:
        a, b = decode(tmp / "full" / name), decode(out / name)
        assert a.shape == b.shape and np.array_equal(a, b), name  # no gap, no duplicate, same samples
    chunks_a = sorted((tmp / "full" / "chunks").glob("*.npy"))
    chunks_b = sorted((out / "chunks").glob("*.npy"))
    assert [p.name for p in chunks_a] == [p.name for p in chunks_b]
    assert all(np.array_equal(np.load(a), np.load(b)) for a, b in zip(chunks_a, chunks_b, strict=True))
    assert (out / "subtitles.srt").read_text() == (tmp / "full" / "subtitles.srt").read_text()
    third = run_audiobook(_job(book, out))  # nothing left: no synthesis, same book
    assert third["processed"] == 0 and third["skipped_already_done"] == 7 and third["extra"]["complete"]


@pytest.mark.slow
def test_failed_chunk_is_reported_and_silent(ray_cluster, tmp_path):
    import soundfile as sf
    from job_faults import FlakyAudiobookActor

    from voxray.jobs.audiobook import run_audiobook

    book = tmp_path / "short.txt"
    book.write_text("CHAPTER 1\n\nThe first line.\n\nThe second line.\n\nThe third line.\n", encoding="utf-8")
    # 000-00002 fails on both attempts; 000-00003 fails once and its retry succeeds (a test subclass)
    job = _job(book, tmp_path / "out", format="wav", pause={"paragraph": 0.5, "chapter": 2.0, "failed_chunk": 1.5})
    report = run_audiobook(job, actor_cls=FlakyAudiobookActor)
    extra = report["extra"]
    assert extra["complete"] and report["errors"] == 1 and report["ok"] == 3
    (failure,) = extra["failed_chunks"]
    assert failure["chunk"] == "000-00002" and failure["chapter"] == 0 and failure["position"] == 2
    assert failure["chapter_title"] == "CHAPTER 1" and failure["attempts"] == 2
    assert failure["text"] == "The second line." and failure["error"].startswith("inference: injected failure")
    saved = json.loads((tmp_path / "out" / "run.json").read_text())
    assert saved["extra"]["failed_chunks"] == extra["failed_chunks"]
    audio, sr = sf.read(str(tmp_path / "out" / extra["chapter_files"][0]), dtype="float32")
    gap = audio[round(failure["at_s"] * sr): round((failure["at_s"] + 1.5) * sr)]
    assert len(gap) == round(1.5 * sr) and not gap.any()  # the gap is exactly the failed-chunk silence
    assert np.abs(audio[round((failure["at_s"] + 2.0) * sr):]).max() > 0.01  # the book goes on after it
    cues = parse_srt((tmp_path / "out" / "subtitles.srt").read_text())
    assert [t for _, _, t in cues] == ["CHAPTER 1", "The first line.", "The third line."]


def test_cli_dry_run(capsys, tmp_path):
    from voxray import cli

    assert cli.main(["audiobook", str(ROOT / "samples/books/shakespeare_eb1911.md"), "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["title"] == "William Shakespeare" and len(plan["chapters"]) == 14
    assert plan["chapters"][1]["title"] == "Youth" and plan["characters"] >= 20_000
    assert cli.main(["audiobook", str(tmp_path / "missing.epub"), "--out", str(tmp_path / "o")]) == 2  # user error
    assert not (tmp_path / "o").exists()


def test_an_unclosed_code_fence_is_read_not_dropped():
    from voxray.audiobook.book import parse_markdown

    book = parse_markdown("# One\n\nFirst.\n\n```\nSwallowed by a stray fence.\n\nStill the book.\n", "b.md")
    assert book.chapters[0].paragraphs[-2:] == ["Swallowed by a stray fence.", "Still the book."]
    closed = parse_markdown("# One\n\nFirst.\n\n```\ncode = 1\n```\n\nAfter.\n", "b.md")
    assert closed.chapters[0].paragraphs[-2:] == ["First.", "After."]  # real code is still skipped


@pytest.mark.slow
def test_torch_actors_batch_chunks_and_write_word_subtitles(ray_cluster, tmp_path):
    """The torch backend: an actor's chunks share padded forwards; ``subtitles: word`` gives one cue
    per spoken word, in book order, inside each chunk's audio."""
    import kokoro  # noqa: F401  (make setup installs it with --no-deps: a missing one must fail)

    from voxray.jobs.audiobook import run_audiobook

    book = make_epub(tmp_path / "book.epub", CHAPTERS)
    job = AudiobookJob(book=str(book), out=str(tmp_path / "out"), progress=False, format="wav", subtitles="word",
                       tts={"backend": "torch", "noise_seed": 3},
                       resources={"actors": 1, "cpus_per_actor": 1, "threads_per_actor": 2, "rows_per_call": 4})
    report = run_audiobook(job)
    extra = report["extra"]
    assert report["errors"] == 0 and extra["complete"] and extra["backend"] == "torch"
    assert extra["chunks_per_forward"] > 1 and extra["forward_passes"] < extra["chunks"], extra
    cues = parse_srt((tmp_path / "out" / "subtitles.srt").read_text(encoding="utf-8"))
    spoken = [re.sub(r"[^a-z]", "", t.lower()) for _, _, t in cues]
    said = " ".join(" ".join([title, *paras]) for title, paras in CHAPTERS)
    book_words = re.sub(r"[^a-z ]", "", said.lower()).split()
    assert [w for w in spoken if w] == book_words
    for (s0, e0, _), (s1, _, _) in zip(cues, cues[1:], strict=False):
        assert s0 < e0 <= s1 + 1e-3
    assert cues[-1][1] <= report["audio_s"] + 1e-3
