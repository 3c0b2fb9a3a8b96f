"""Input listing for batch jobs: files, directories, globs, fsspec URLs and manifests -> rows.

Below the runners and the jobs (no Ray): fine-tuning data, the batch jobs and the tools all list
inputs the same way, with the same ids. :func:`input_table` is the columnar form the batch jobs use:
a million-row manifest becomes three Arrow columns (id, path, duration_s), never a million dicts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from voxray.errors import InputError
from voxray.storage import fs_and_path, is_remote, unstrip

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".webm", ".aiff", ".au")
MANIFEST_EXTENSIONS = (".csv", ".tsv", ".jsonl", ".ndjson", ".parquet")


def read_manifest(url: str) -> list[dict[str, Any]]:
    """Rows of a CSV/TSV/JSONL/Parquet manifest (local or fsspec URL) as dicts."""
    import fsspec

    lower = url.lower()
    with fsspec.open(url, "rb") as fh:
        data = fh.read()
    if lower.endswith(".parquet"):
        return pq.read_table(io.BytesIO(data)).to_pylist()
    text = data.decode("utf-8-sig")
    if lower.endswith((".jsonl", ".ndjson")):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise InputError(f"{url}: line {n} is not valid JSON: {exc.msg}") from exc
        return rows
    delimiter = "\t" if lower.endswith(".tsv") else ","
    return list(csv.DictReader(io.StringIO(text), delimiter=delimiter))


def _stem_id(path: str, root: str | None) -> str:
    rel = os.path.relpath(path, root) if root else os.path.basename(path)
    return os.path.splitext(rel)[0].replace(os.sep, "/")


def expand_inputs(
    inputs: Sequence[str],
    extensions: tuple[str, ...] = AUDIO_EXTENSIONS,
    required: Sequence[str] = ("path",),
) -> list[dict[str, Any]]:
    """Expand files, directories, globs, fsspec URLs and manifests into rows with a unique ``id``.

    Manifest rows keep their extra columns (e.g. ``text`` for fine-tuning). A missing path is kept
    as a row (it becomes an error row later) so nothing a user listed silently disappears.
    """
    rows: list[dict[str, Any]] = []
    for item in inputs:
        lower = item.lower()
        if lower.endswith(MANIFEST_EXTENSIONS):
            base = os.path.dirname(item)
            manifest = read_manifest(item)
            for n, row in enumerate(manifest):
                missing = [c for c in required if not row.get(c) and row.get(c) != 0]
                if "path" in required and "path" in missing:
                    raise InputError(f"{item}: row {n + 1} has no 'path' (columns: {sorted(row)})")
                row = dict(row)
                path = row.get("path")
                if path and not is_remote(path) and not os.path.isabs(path) and not is_remote(item):
                    # relative paths in a manifest are relative to the manifest
                    row["path"] = os.path.normpath(os.path.join(base, path))
                if row.get("id") in (None, ""):
                    row["id"] = _stem_id(str(path), None) if path else f"row-{n + 1:06d}"
                row["id"] = str(row["id"])
                rows.append(row)
            continue
        fs, path = fs_and_path(item)
        if any(ch in path for ch in "*?["):
            matches = sorted(p for p in fs.glob(path) if p.lower().endswith(extensions))
            rows += [{"id": _stem_id(p, None), "path": unstrip(item, fs, p)} for p in matches]
        elif fs.isdir(path):
            found = sorted(p for p in fs.find(path) if p.lower().endswith(extensions))
            rows += [{"id": _stem_id(p, path), "path": unstrip(item, fs, p)} for p in found]
        else:
            rows.append({"id": _stem_id(path, None), "path": item})
    return dedupe_ids(rows)


def dedupe_ids(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make ids unique by suffixing a short hash of the path; identical rows are kept once."""
    seen: dict[str, str] = {}
    out = []
    for row in rows:
        key = row["id"]
        if key in seen:
            if row.get("path") is not None and seen[key] == row.get("path"):
                continue  # the same file listed twice
            digest = hashlib.sha1(str(row.get("path")).encode()).hexdigest()[:8]
            row = {**row, "id": f"{key}-{digest}"}
        seen[row["id"]] = row.get("path")
        out.append(row)
    return out


# ---------------------------------------------------------------- columnar listing (batch jobs)
INPUT_SCHEMA = pa.schema([("id", pa.string()), ("path", pa.string()), ("duration_s", pa.float64())])


def _read_manifest_table(url: str) -> pa.Table:
    """A manifest's ``id``, ``path`` and ``duration_s`` columns (missing ones as nulls), columnar."""
    import fsspec
    import pyarrow.csv as pacsv
    import pyarrow.json as pajson

    lower = url.lower()
    wanted = INPUT_SCHEMA.names
    try:
        with fsspec.open(url, "rb") as fh:
            if lower.endswith(".parquet"):
                names = pq.read_schema(fh).names
                fh.seek(0)
                table = pq.read_table(fh, columns=[c for c in wanted if c in names])
            elif lower.endswith((".jsonl", ".ndjson")):
                try:
                    table = pajson.read_json(fh, parse_options=pajson.ParseOptions(
                        explicit_schema=INPUT_SCHEMA, unexpected_field_behavior="ignore"))
                except pa.ArrowInvalid:  # mixed types (numeric ids): column lists, still no dict per row
                    fh.seek(0)
                    table = _jsonl_columns(fh, url)
                names = [c for c in wanted if table.column(c).null_count < table.num_rows]
            else:
                delimiter = "\t" if lower.endswith(".tsv") else ","
                header = fh.readline().decode("utf-8-sig")
                names = next(csv.reader([header], delimiter=delimiter), [])
                fh.seek(0)
                present = [c for c in wanted if c in names]
                table = pacsv.read_csv(
                    fh,
                    parse_options=pacsv.ParseOptions(delimiter=delimiter),
                    convert_options=pacsv.ConvertOptions(
                        column_types={c: t for c, t in zip(wanted, INPUT_SCHEMA.types, strict=True) if c in present},
                        include_columns=present, strings_can_be_null=True,
                    ),
                )
    except FileNotFoundError as exc:
        raise InputError(f"manifest not found: {url}") from exc
    except (pa.ArrowInvalid, ValueError) as exc:
        raise InputError(f"{url}: cannot read the manifest: {exc}") from exc
    if "path" not in names:
        raise InputError(f"{url}: a manifest needs a 'path' column (found {sorted(names)})")
    n = table.num_rows
    cols = {}
    for name, typ in zip(INPUT_SCHEMA.names, INPUT_SCHEMA.types, strict=True):
        if name in table.column_names:
            try:
                cols[name] = table.column(name).cast(typ)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise InputError(f"{url}: column {name!r} must be a {typ}: {exc}") from exc
        else:
            cols[name] = pa.nulls(n, typ)
    return pa.table(cols, schema=INPUT_SCHEMA)


def _jsonl_columns(fh: Any, url: str) -> pa.Table:
    cols: dict[str, list[Any]] = {c: [] for c in INPUT_SCHEMA.names}
    for n, line in enumerate(io.TextIOWrapper(fh, encoding="utf-8-sig"), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{url}: line {n} is not valid JSON: {exc.msg}") from exc
        for c in INPUT_SCHEMA.names:
            v = rec.get(c)
            cols[c].append(v if v is None or c == "duration_s" else str(v))
    return pa.table(cols, schema=INPUT_SCHEMA)


def _manifest_rows(url: str) -> pa.Table:
    """Ids defaulted, relative paths resolved, with Arrow kernels: Python touches only the rows that need it."""
    table = _read_manifest_table(url)
    path = table.column("path").combine_chunks()
    empty = pc.fill_null(pc.equal(path, ""), True)
    if pc.any(empty).as_py():
        first = pc.index(empty, True).as_py()
        raise InputError(f"{url}: row {first + 1} has no 'path'")
    if not is_remote(url):  # relative paths in a local manifest are relative to the manifest
        relative = pc.invert(pc.or_(pc.starts_with(path, "/"), pc.match_substring(path, "://")))
        if pc.any(relative).as_py():
            base = os.path.dirname(url)
            idx = pc.indices_nonzero(relative).to_pylist()
            fixed = [os.path.normpath(os.path.join(base, p)) for p in pc.take(path, idx).to_pylist()]
            values = path.to_pylist() if len(idx) < len(path) else fixed
            if len(idx) < len(path):
                for i, p in zip(idx, fixed, strict=True):
                    values[i] = p
            path = pa.array(values, pa.string())
    ids = table.column("id").combine_chunks()
    missing = pc.fill_null(pc.equal(ids, ""), True)
    if pc.any(missing).as_py():
        idx = pc.indices_nonzero(missing).to_pylist()
        values = ids.to_pylist()
        for i, p in zip(idx, pc.take(path, idx).to_pylist(), strict=True):
            values[i] = _stem_id(p, None)
        ids = pa.array(values, pa.string())
    return pa.table({"id": ids, "path": path, "duration_s": table.column("duration_s")}, schema=INPUT_SCHEMA)


def input_table(inputs: Sequence[str], extensions: tuple[str, ...] = AUDIO_EXTENSIONS) -> pa.Table:
    """The batch jobs' input listing: one row per input with a unique ``id``, ``path`` and the
    manifest's ``duration_s`` when it has one (else null: the job probes it in parallel tasks).

    Same ids as :func:`expand_inputs`. Manifests are read by Arrow, column by column.
    """
    tables: list[pa.Table] = []
    for item in inputs:
        if item.lower().endswith(MANIFEST_EXTENSIONS):
            tables.append(_manifest_rows(item))
            continue
        rows = expand_inputs([item], extensions)
        tables.append(pa.table({"id": [r["id"] for r in rows], "path": [str(r["path"]) for r in rows],
                                "duration_s": pa.nulls(len(rows), pa.float64())}, schema=INPUT_SCHEMA))
    if not tables:
        return INPUT_SCHEMA.empty_table()
    table = pa.concat_tables(tables).combine_chunks()
    if pc.count_distinct(table.column("id")).as_py() == table.num_rows:
        return table
    rows = dedupe_ids([{"id": i, "path": p, "duration_s": d} for i, p, d in zip(
        table.column("id").to_pylist(), table.column("path").to_pylist(), table.column("duration_s").to_pylist(),
        strict=True)])
    return pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)
