"""report.html: the numbers a job's report shows equal its run.json's (a job with errors)."""

from __future__ import annotations

import json
import re

import pyarrow as pa

from voxray.report import EXTRA_FIELDS, SUMMARY_FIELDS, fmt, write_report_html
from voxray.results import RunCounts, RunReport, fill_report


def _job_with_errors():
    rows = pa.table({
        "id": [f"r{i}" for i in range(8)],
        "duration_s": [1.0, 2.5, 3.0, 0.5, None, 4.0, None, 2.0],
        "error": [None, None, None, None, "decode: not audio: x.wav", None, "empty_audio: 0 samples in y.wav", None],
    })
    rows2 = pa.table({"id": ["r8"], "duration_s": pa.array([None], pa.float64()),
                      "error": ["decode: truncated file z.flac"]})
    report = RunReport(job="transcribe", out="/x", started_at="2026-12-01T00:00:00Z", wall_s=6.5, inputs=10,
                       skipped_already_done=1)
    counts = RunCounts()
    counts.add(rows)
    counts.add(rows2)
    fill_report(report, counts)
    report.extra = {"padding_waste": 0.0636, "frames": 9376, "padded_frames": 596, "actors": 2,
                    "timeline": [{"t": 0.0, "rows": 0, "actors": 1}, {"t": 3.0, "rows": 8, "actors": 2},
                                 {"t": 6.5, "rows": 1, "actors": 2}]}
    report.totals = {"rows": 9, "errors": 3}
    return json.loads(json.dumps(report.to_dict())), pa.concat_tables([rows, rows2])


def _cell(page: str, key: str) -> str:
    m = re.search(rf"data-key='{re.escape(key)}'>([^<]*)<", page)
    assert m, key
    return m.group(1)


def test_report_numbers_equal_run_json(tmp_path):
    run_json, rows = _job_with_errors()
    path = write_report_html(tmp_path, run_json, rows)
    assert path.endswith("report.html")
    page = (tmp_path / "report.html").read_text()
    assert run_json["errors"] == 3 and run_json["errors_by_kind"] == {"decode": 2, "empty_audio": 1}
    for _, key, spec in SUMMARY_FIELDS:
        assert _cell(page, key) == fmt(run_json[key], spec)
    for _, key, spec in EXTRA_FIELDS:
        if key in run_json["extra"]:
            assert _cell(page, f"extra.{key}") == fmt(run_json["extra"][key], spec)
    for kind, n in run_json["errors_by_kind"].items():
        assert _cell(page, f"errors_by_kind.{kind}") == str(n)
    assert _cell(page, "totals.rows") == "9"
    data = json.loads(re.search(r"id='voxray-report'>(.*?)</script>", page, re.S).group(1))
    assert data["summary"]["processed"] == run_json["processed"] == 9
    assert data["summary"]["audio_s"] == run_json["audio_s"]
    assert data["errors_by_kind"] == run_json["errors_by_kind"]
    # the histogram counts the ok rows' durations, which add up to run.json's audio_s
    assert sum(data["histogram"]["counts"]) == run_json["ok"] == 6
    assert abs(sum(d for d, e in zip(rows["duration_s"].to_pylist(), rows["error"].to_pylist(), strict=True)
                   if not e) - run_json["audio_s"]) < 1e-9
    # sample messages per kind, and the plots are inline SVG (no script, no network)
    assert "decode: truncated file z.flac" in page and "empty_audio: 0 samples in y.wav" in page
    assert page.count("<svg") == 4  # histogram, throughput, actors, padding bar
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")


def test_report_without_rows_or_timeline(tmp_path):
    run_json = RunReport(job="synthesize", out="/y", started_at="t").to_dict()
    write_report_html(str(tmp_path), run_json)
    page = (tmp_path / "report.html").read_text()
    assert "no errors" in page and "recorded no timeline" in page and "no durations" in page
