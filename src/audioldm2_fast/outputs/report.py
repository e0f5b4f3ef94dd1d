"""``report.html``: a static page per run dir and per sweep dir, to listen to and look at the outputs.

The page is self-contained (inline CSS and JS, no network); audio and spectrograms are linked by relative paths, so
a run or sweep dir can be moved or copied as a whole. Each ``<audio>`` writes its loaded duration into the page
(``data-duration`` and the "loaded" cell), which shows at a glance that every file plays.
"""

from __future__ import annotations

import json
import os
from html import escape
from pathlib import Path
from typing import Any

from .files import EXTENSIONS, write_bytes
from .manifest import read_manifest

REPORT = "report.html"
_AUDIO_EXTENSIONS = tuple(EXTENSIONS.values())
_MIME = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg", ".mp3": "audio/mpeg"}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse;margin:0 0 1.5em}
th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}
th{background:#f3f3f3}
th.sortable{cursor:pointer}
th.sortable:after{content:" \\2195";color:#999}
td.num{text-align:right;font-variant-numeric:tabular-nums}
img.spec{width:440px;display:block}
.prompt{min-width:10em}
.prompt{max-width:28em}
.error{color:#b00}
.output{margin:0 0 .8em}
"""

_SCRIPT = """
document.querySelectorAll('audio').forEach(function (a) {
  var cell = document.getElementById(a.dataset.cell);
  a.addEventListener('loadedmetadata', function () {
    a.dataset.duration = a.duration.toFixed(4);
    if (cell) cell.textContent = a.duration.toFixed(2) + ' s';
  });
  a.addEventListener('error', function () {
    a.dataset.error = 'cannot load';
    if (cell) cell.textContent = 'cannot load';
  });
});
document.querySelectorAll('th.sortable').forEach(function (th) {
  th.addEventListener('click', function () {
    var table = th.closest('table'), body = table.tBodies[0], col = th.cellIndex;
    var asc = th.dataset.order !== 'asc';
    th.dataset.order = asc ? 'asc' : 'desc';
    var key = function (tr) {
      var v = tr.cells[col].dataset.value, n = parseFloat(v);
      return v === '' || v === undefined ? Infinity : (isNaN(n) ? v : n);
    };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var c = (typeof x === typeof y) ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x === 'number' ? -1 : 1);
      return asc ? c : -c;
    }).forEach(function (tr) { body.appendChild(tr); });
  });
});
"""


def _page(title: str, body: str) -> bytes:
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>\n"
        f"<body>\n<h1>{escape(title)}</h1>\n{body}\n<script>{_SCRIPT}</script>\n</body></html>\n"
    ).encode()


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _td(value: Any, numeric: bool = False, html: str | None = None) -> str:
    sort = "" if value is None else str(value)
    cls = ' class="num"' if numeric else ""
    return f'<td{cls} data-value="{escape(sort)}">{html if html is not None else escape(_fmt(value))}</td>'


def _table(headers: list[str], rows: list[str], sortable: bool = False) -> str:
    cls = ' class="sortable"' if sortable else ""
    head = "".join(f"<th{cls}>{escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"


def _audio_html(src: str, cell_id: str) -> str:
    mime = _MIME.get(os.path.splitext(src)[1].lower(), "")
    return (
        f'<audio controls preload="metadata" data-cell="{cell_id}" src="{escape(src)}" type="{mime}"></audio>'
        f'<div>loaded: <span id="{cell_id}">…</span></div>'
    )


def _output_block(row: dict[str, Any], prefix: str, cell_id: str) -> str:
    """One output inside a sweep cell: player, spectrogram and its identifying values."""
    score = f", score {row['score']:.3f}" if row.get("score") is not None else ""
    spec = row.get("spectrogram")
    img = f'<img class="spec" loading="lazy" src="{escape(prefix + spec)}" alt="spectrogram">' if spec else ""
    return (
        f'<div class="output"><div class="prompt">{escape(row["prompt"])}</div>'
        f"<div>seed {row['seed']}, candidate {row['candidate']}, rank {row['rank']}{score}</div>"
        f"{_audio_html(prefix + row['path'], cell_id)}{img}</div>"
    )


def _common_settings(rows: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ["checkpoint", "precision", "scheduler", "steps", "guidance_scale", "negative_prompt", "audio_length_s",
            "sample_rate", "format", "subtype"]  # fmt: skip
    settings = {k: rows[0].get(k) for k in keys if all(r.get(k) == rows[0].get(k) for r in rows)}
    finishing = [r.get("finishing") or {} for r in rows]
    for k in ("normalize", "headroom_db", "loudness_target_lufs", "trim"):
        if finishing and all(k in f and f[k] == finishing[0][k] for f in finishing):
            settings[f"finishing.{k}"] = finishing[0][k]
    return settings


def run_report_html(run_dir: Path) -> bytes:
    """The page for one run dir, built from its manifest.jsonl (every call that wrote there)."""
    rows = read_manifest(run_dir / "manifest.jsonl")
    parts = []
    overrides = run_dir / ".hydra" / "overrides.yaml"
    if overrides.is_file():
        parts.append(f"<h2>Overrides</h2><pre>{escape(overrides.read_text(encoding='utf-8'))}</pre>")
    if rows:
        settings = _common_settings(rows)
        parts.append(
            "<h2>Settings</h2>" + _table(["key", "value"], [f"<tr>{_td(k)}{_td(v)}</tr>" for k, v in settings.items()])
        )
        calls: dict[str, dict[str, float]] = {}
        for r in rows:
            calls.setdefault(json.dumps(r.get("stage_times_s") or {}, sort_keys=True), r.get("stage_times_s") or {})
        stages = list(dict.fromkeys(s for t in calls.values() for s in t))  # first-seen order
        timing_rows = [
            "<tr>"
            + _td(n + 1, True)
            + "".join(_td(t.get(s), True) for s in stages)
            + _td(round(sum(t.values()), 6), True)
            + "</tr>"
            for n, t in enumerate(calls.values())
        ]
        parts.append("<h2>Timings (s)</h2>" + _table(["call", *stages, "total"], timing_rows, sortable=True))
    out_rows = []
    for n, r in enumerate(rows):
        spec = r.get("spectrogram")
        img = f'<img class="spec" loading="lazy" src="{escape(spec)}" alt="spectrogram">' if spec else ""
        out_rows.append(
            "<tr>"
            + _td(r["path"], html=_audio_html(r["path"], f"d{n}") + f"<div>{escape(r['path'])}</div>")
            + _td(None, html=img)
            + _td(r["prompt"], html=f'<div class="prompt">{escape(r["prompt"])}</div>')
            + _td(r.get("seed"), True)
            + _td(r.get("candidate"), True)
            + _td(r.get("rank"), True)
            + _td(r.get("score"), True)
            + _td(r.get("steps"), True)
            + _td(r.get("scheduler"))
            + _td(round(sum((r.get("stage_times_s") or {}).values()), 4), True)
            + "</tr>"
        )
    headers = ["audio", "spectrogram", "prompt", "seed", "candidate", "rank", "score", "steps", "scheduler", "time (s)"]
    parts.append(f"<h2>Outputs ({len(rows)})</h2>" + _table(headers, out_rows, sortable=True))
    return _page(f"audioldm2-fast run: {run_dir.name}", "\n".join(parts))


def write_run_report(run_dir: Path) -> Path:
    """(Re)write ``report.html`` in a run dir from its manifest."""
    path = run_dir / REPORT
    write_bytes(path, run_report_html(run_dir))
    return path


def _job_outputs(sweep_dir: Path, outputs: list[str], job: Any) -> str:
    """A job's output cell: players and spectrograms for audio (from the manifest beside it), links for the rest."""
    manifests: dict[Path, dict[str, dict[str, Any]]] = {}
    blocks = []
    for k, out in enumerate(outputs):
        path = Path(out)
        rel = os.path.relpath(path, sweep_dir).replace(os.sep, "/")
        if path.suffix.lower() not in _AUDIO_EXTENSIONS:
            blocks.append(f'<div><a href="{escape(rel)}">{escape(path.name)}</a></div>')
            continue
        if path.parent not in manifests:
            manifests[path.parent] = {r["path"]: r for r in read_manifest(path.parent / "manifest.jsonl")}
        row = manifests[path.parent].get(path.name)
        prefix = rel[: -len(path.name)]
        if row is None:
            blocks.append(f'<div class="output">{_audio_html(rel, f"j{job}-{k}")}</div>')
        else:
            blocks.append(_output_block(row, prefix, f"j{job}-{k}"))
    return "".join(blocks)


def sweep_report_html(sweep_dir: Path, rows: list[dict[str, Any]]) -> bytes:
    """The page for a sweep: one sortable row per job (its summary row) with its outputs."""
    table_rows = []
    for r in rows:
        outputs = [o for o in str(r.get("outputs") or "").split(";") if o]
        status = r.get("status")
        cls = "" if status == "COMPLETED" else ' class="error"'
        table_rows.append(
            "<tr>"
            + _td(r.get("job"), True)
            + _td(r.get("overrides"), html=f"<code>{escape(str(r.get('overrides') or ''))}</code>")
            + _td(status, html=f"<span{cls}>{escape(str(status))}</span>")
            + _td(r.get("e2e_s"), True)
            + _td(r.get("load_s"), True)
            + _td(r.get("denoiser_s"), True)
            + _td(r.get("error"), html=f'<span class="error">{escape(str(r.get("error") or ""))}</span>')
            + _td(len(outputs), html=_job_outputs(sweep_dir, outputs, r.get("job")))
            + "</tr>"
        )
    headers = ["job", "overrides", "status", "time (s)", "load (s)", "denoiser (s)", "error", "outputs"]
    done = sum(r.get("status") == "COMPLETED" for r in rows)
    intro = f"<p>{done} of {len(rows)} job(s) completed. Click a column header to sort.</p>"
    png = '<p><img src="summary.png" alt="time per job"></p>' if (sweep_dir / "summary.png").is_file() else ""
    return _page(f"audioldm2-fast sweep: {sweep_dir.name}", intro + _table(headers, table_rows, sortable=True) + png)


def write_sweep_report(sweep_dir: Path, rows: list[dict[str, Any]]) -> Path:
    path = sweep_dir / REPORT
    write_bytes(path, sweep_report_html(sweep_dir, rows))
    return path
