"""``report.html`` beside ``run.json``: a static page a person can open after a batch job.

Plots are small hand-written inline SVGs (no plotting library, no script, no server): a histogram
of the rows' durations, throughput over time and actors over time when the job recorded a
timeline, padding waste / batch fill, and errors by kind with a sample of messages. Every number
the page shows comes from ``run.json`` (its summary table is the run.json values, never recounted)
or from the rows passed in (the histogram and the error samples); the same numbers are embedded as
JSON (``<script type="application/json" id="voxray-report">``) for tests and tools.

Core layer: plain Python + pyarrow; no Ray, no HTTP.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from voxray.errors import error_kind
from voxray.storage import fs_and_path, fs_join, is_remote

REPORT_HTML = "report.html"
MAX_SAMPLES_PER_KIND = 5
_W, _H, _PAD = 560, 200, 36

#: run.json fields shown in the summary table, in order (label, key, format).
SUMMARY_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("job", "job", "s"),
    ("started at", "started_at", "s"),
    ("wall time (s)", "wall_s", ".2f"),
    ("inputs", "inputs", "d"),
    ("skipped (already done)", "skipped_already_done", "d"),
    ("processed", "processed", "d"),
    ("ok", "ok", "d"),
    ("errors", "errors", "d"),
    ("audio (s)", "audio_s", ".2f"),
    ("audio (h)", "audio_hours", ".4f"),
    ("RTFx (audio s / wall s)", "rtfx", ".2f"),
)
#: Numbers from run.json's ``extra`` shown when present (label, key, format).
EXTRA_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("padding waste (padded / total frames)", "padding_waste", ".4f"),
    ("frames", "frames", "d"),
    ("padded frames", "padded_frames", "d"),
    ("forward passes", "forward_passes", "d"),
    ("actors", "actors", "d"),
    ("actor restarts", "actor_restarts", "d"),
    ("crash rows", "crash_rows", "d"),
    ("shards", "shards", "d"),
    ("real-time factor", "real_time_factor", ".3f"),
)


def fmt(value: Any, spec: str) -> str:
    """The text the report shows for one value (also what tests compare against)."""
    if value is None:
        return "-"
    if spec == "s":
        return str(value)
    if spec == "d":
        return f"{int(value):d}"
    return format(float(value), spec)


def _columns(rows: Any) -> dict[str, list[Any]]:
    """A pyarrow Table, a dict of columns or a list of row dicts -> dict of lists."""
    if rows is None:
        return {}
    if hasattr(rows, "column_names") and hasattr(rows, "column"):
        return {name: rows.column(name).to_pylist() for name in rows.column_names if name in ("duration_s", "error")}
    if isinstance(rows, Mapping):
        return {k: list(v) for k, v in rows.items()}
    rows = list(rows)
    keys = {k for r in rows for k in r}
    return {k: [r.get(k) for r in rows] for k in keys}


def duration_histogram(durations: Sequence[float], bins: int = 20) -> tuple[list[float], list[int]]:
    """Bin edges and counts of the given durations (``bins`` equal bins from 0 to the max)."""
    values = [float(d) for d in durations if d is not None and math.isfinite(float(d)) and float(d) >= 0]
    if not values:
        return [], []
    top = max(values) or 1.0
    edges = [top * i / bins for i in range(bins + 1)]
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, int(v / top * bins))] += 1
    return edges, counts


def error_samples(errors: Sequence[str | None], per_kind: int = MAX_SAMPLES_PER_KIND) -> dict[str, list[str]]:
    """Up to ``per_kind`` distinct messages for each error kind, in row order."""
    out: dict[str, list[str]] = {}
    for err in errors:
        if not err:
            continue
        kind = error_kind(err) or "internal"
        bucket = out.setdefault(kind, [])
        if len(bucket) < per_kind and err not in bucket:
            bucket.append(err)
    return out


# ---------------------------------------------------------------- SVG
def _svg(body: str, title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'role="img" aria-label="{html.escape(title)}"><title>{html.escape(title)}</title>'
        f'<rect width="{_W}" height="{_H}" fill="#fff"/>{body}</svg>'
    )


def _axes(xmax: float, ymax: float, xlabel: str, ylabel: str) -> str:
    x0, y0, x1, y1 = _PAD, _H - _PAD, _W - 10, 10
    parts = [
        f'<line x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}" stroke="#333"/>',
        f'<line x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}" stroke="#333"/>',
        f'<text x="{(x0 + x1) / 2}" y="{_H - 6}" font-size="11" text-anchor="middle">{html.escape(xlabel)}</text>',
        f'<text x="10" y="{(y0 + y1) / 2}" font-size="11" text-anchor="middle" '
        f'transform="rotate(-90 10 {(y0 + y1) / 2})">{html.escape(ylabel)}</text>',
        f'<text x="{x0}" y="{y0 + 13}" font-size="10" text-anchor="middle">0</text>',
        f'<text x="{x1}" y="{y0 + 13}" font-size="10" text-anchor="end">{xmax:.3g}</text>',
        f'<text x="{x0 - 3}" y="{y1 + 8}" font-size="10" text-anchor="end">{ymax:.3g}</text>',
    ]
    return "".join(parts)


def histogram_svg(edges: list[float], counts: list[int], xlabel: str = "duration (s)") -> str:
    if not counts:
        return "<p>no durations</p>"
    ymax = max(counts) or 1
    pw, ph = _W - 10 - _PAD, _H - _PAD - 10
    bw = pw / len(counts)
    bars = []
    for i, c in enumerate(counts):
        h = ph * c / ymax
        bars.append(
            f'<rect x="{_PAD + i * bw + 1:.1f}" y="{_H - _PAD - h:.1f}" width="{max(bw - 2, 1):.1f}" '
            f'height="{h:.1f}" fill="#4c78a8"><title>{edges[i]:.2f}-{edges[i + 1]:.2f} s: {c}</title></rect>'
        )
    return _svg(_axes(edges[-1], ymax, xlabel, "rows") + "".join(bars), "duration histogram")


def line_svg(xs: Sequence[float], ys: Sequence[float], xlabel: str, ylabel: str, title: str, step: bool = False) -> str:
    if not xs:
        return "<p>no data</p>"
    xmax = max(xs) or 1.0
    ymax = max(ys) or 1.0
    pw, ph = _W - 10 - _PAD, _H - _PAD - 10
    pts = []
    prev_y = None
    for x, y in zip(xs, ys, strict=True):
        px, py = _PAD + pw * x / xmax, _H - _PAD - ph * y / ymax
        if step and prev_y is not None:
            pts.append(f"{px:.1f},{prev_y:.1f}")
        pts.append(f"{px:.1f},{py:.1f}")
        prev_y = py
    body = f'<polyline fill="none" stroke="#f58518" stroke-width="2" points="{" ".join(pts)}"/>'
    return _svg(_axes(xmax, ymax, xlabel, ylabel) + body, title)


def bar_svg(value: float, label: str) -> str:
    """One horizontal bar of a fraction (padding waste / batch fill)."""
    v = min(max(float(value), 0.0), 1.0)
    w = (_W - 20) * v
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_W} 40" width="{_W}" height="40" role="img" '
        f'aria-label="{html.escape(label)}"><rect x="10" y="8" width="{_W - 20}" height="18" fill="#e5e5e5"/>'
        f'<rect x="10" y="8" width="{w:.1f}" height="18" fill="#e45756"/>'
        f'<text x="14" y="21" font-size="11">{html.escape(label)}</text></svg>'
    )


# ---------------------------------------------------------------- page
def report_data(run_json: Mapping[str, Any], rows: Any = None, timeline: Sequence[Mapping[str, Any]] | None = None
                ) -> dict[str, Any]:
    """Everything the page shows, as plain JSON (summary from run.json; plots from rows/timeline)."""
    cols = _columns(rows)
    errors_col = cols.get("error", [])
    durations = [d for d, e in zip(cols.get("duration_s", []), errors_col or [None] * len(cols.get("duration_s", [])),
                                   strict=False) if not e]
    edges, counts = duration_histogram(durations)
    extra = dict(run_json.get("extra") or {})
    summary = {key: run_json.get(key) for _, key, _ in SUMMARY_FIELDS}
    extras = {key: extra[key] for _, key, _ in EXTRA_FIELDS if key in extra and extra[key] is not None}
    events = sorted((dict(e) for e in (timeline or extra.get("timeline") or [])), key=lambda e: float(e.get("t", 0)))
    return {
        "summary": summary,
        "extra": extras,
        "errors_by_kind": dict(run_json.get("errors_by_kind") or {}),
        "error_samples": error_samples(errors_col),
        "histogram": {"edges": edges, "counts": counts},
        "timeline": events,
        "totals": dict(run_json.get("totals") or {}),
    }


def render_report(run_json: Mapping[str, Any], rows: Any = None, timeline: Sequence[Mapping[str, Any]] | None = None
                  ) -> str:
    """The report page as one HTML string."""
    data = report_data(run_json, rows, timeline)
    esc = html.escape
    out = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>voxray {esc(str(run_json.get('job', 'job')))} report</title>",
        "<style>body{font:14px system-ui,sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}td.n{text-align:right}"
        "code{font-size:12px}</style></head><body>",
        f"<h1>voxray {esc(str(run_json.get('job', '')))} run</h1>",
        f"<p>output: <code>{esc(str(run_json.get('out', '')))}</code></p>",
        "<h2>Summary (run.json)</h2><table id='summary'>",
    ]
    for label, key, spec in SUMMARY_FIELDS:
        value = esc(fmt(run_json.get(key), spec))
        out.append(f"<tr><th>{esc(label)}</th><td class='n' data-key='{key}'>{value}</td></tr>")
    for label, key, spec in EXTRA_FIELDS:
        if key in data["extra"]:
            out.append(
                f"<tr><th>{esc(label)}</th><td class='n' data-key='extra.{key}'>"
                f"{esc(fmt(data['extra'][key], spec))}</td></tr>"
            )
    for key, value in data["totals"].items():
        out.append(f"<tr><th>directory total: {esc(str(key))}</th><td class='n' data-key='totals.{esc(str(key))}'>"
                   f"{esc(str(value))}</td></tr>")
    out.append("</table>")

    out.append("<h2>Durations</h2>")
    h = data["histogram"]
    out.append(histogram_svg(h["edges"], h["counts"]))

    events = data["timeline"]
    out.append("<h2>Throughput over time</h2>")
    if len(events) >= 2:
        ts = [float(e.get("t", 0)) for e in events]
        cum = []
        total = 0.0
        for e in events:
            total += float(e.get("rows", 0))
            cum.append(total)
        out.append(line_svg(ts, cum, "wall time (s)", "rows committed", "rows committed over time"))
        if any("actors" in e for e in events):
            out.append("<h2>Actors over time</h2>")
            out.append(line_svg(ts, [float(e.get("actors", 0)) for e in events], "wall time (s)", "actors",
                                "actors over time", step=True))
    else:
        out.append("<p>this run recorded no timeline (overall: "
                   f"{esc(fmt(run_json.get('rtfx'), '.2f'))} audio s per wall s)</p>")

    out.append("<h2>Padding waste / batch fill</h2>")
    if "padding_waste" in data["extra"]:
        waste = float(data["extra"]["padding_waste"])
        out.append(bar_svg(waste, f"padding waste {waste:.1%} (batch fill {1 - waste:.1%})"))
    else:
        out.append("<p>not recorded by this job</p>")

    out.append("<h2>Errors by kind</h2>")
    if data["errors_by_kind"]:
        out.append("<table id='errors'><tr><th>kind</th><th>rows</th><th>sample messages</th></tr>")
        for kind, n in sorted(data["errors_by_kind"].items(), key=lambda kv: (-kv[1], kv[0])):
            samples = "<br>".join(f"<code>{esc(s)}</code>" for s in data["error_samples"].get(kind, []))
            out.append(f"<tr><td>{esc(kind)}</td><td class='n' data-key='errors_by_kind.{esc(kind)}'>{int(n)}</td>"
                       f"<td>{samples}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>no errors</p>")
    payload = json.dumps(data, default=str).replace("</", "<\\/")
    out.append(f"<script type='application/json' id='voxray-report'>{payload}</script></body></html>")
    return "".join(out)


def write_report_html(out: str | os.PathLike, run_json: Mapping[str, Any], rows: Any = None,
                      timeline: Sequence[Mapping[str, Any]] | None = None) -> str:
    """Write ``report.html`` into the output directory ``out`` (local or fsspec URL); returns its path.

    ``rows``: the run's rows (a pyarrow Table, dict of columns or list of dicts; ``duration_s`` and
    ``error`` are read) for the duration histogram and error samples. ``timeline``: optional events
    ``{"t": seconds since start, "rows": rows committed, "actors": live actors}`` (else
    ``run_json["extra"]["timeline"]`` when present).
    """
    text = render_report(run_json, rows, timeline)
    url = fs_join(os.fspath(out), REPORT_HTML)
    fs, path = fs_and_path(url)
    if is_remote(url):
        with fs.open(path, "w") as fh:
            fh.write(text)
        return url
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)
    return url
