"""The fault suite: kill -9 at random points of a batch run with two workers on one output dir, restart them, resume.

Afterwards every item has exactly one file per candidate, each complete, named by exactly one manifest row; nothing
else of ours is left; and every file the user had put in the dir beforehand is unchanged, including files named the
way the items' files are. ``fault_driver.py`` runs the workers (forked from one warm process) and kills them.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf
from support import HELPERS, child_env

# More seeds: AUDIOLDM2_FAST_FAULT_SEEDS=1,2,3 (each is one driver run of KILLS kills).
SEEDS = [int(s) for s in os.environ.get("AUDIOLDM2_FAST_FAULT_SEEDS", "18").split(",")]
KILLS = 24
OVERRIDES = ["checkpoint=tiny", "steps=2", "audio_length_s=0.32", "num_waveforms=2", "batch_size=2"]
ITEMS = 8
SAMPLES = int(0.32 * 16000)
OURS = re.compile(
    r"^(manifest(\.shard-\d+-of-\d+)?\.jsonl|batch_settings\.json|report\.html|config-[0-9a-f]{12}\.yaml)$"
)
# Hidden temporaries of the dir's shared files (manifest rewrites, the report, ...) and of the start-up write probe:
# a kill in the middle of one leaves it; it is never a real name and never reused.
SHARED_TEMP = re.compile(
    r"^\.((manifest.*\.jsonl|report\.html|batch_settings\.json|config-[0-9a-f]{12}\.yaml)\..+\.part"
    r"|audioldm2-fast-write-test\..+)$"
)


def _user_files(out: Path) -> dict[str, bytes]:
    """Files a user had in the output dir, some named exactly as the items' files and temporaries would be."""
    files = {
        "item001_c0.wav": b"RIFF my own take on item001",
        "item002_c1.png": b"my own drawing",
        "item003_c0-1.wav": b"RIFF another of mine",
        ".item004_c0.wav.abcdefgh.part": b"hidden, and mine",
        "item005_c0.wav.part": b"mine too",
        "notes.txt": b"do not lose me",
    }
    out.mkdir()
    for name, data in files.items():
        (out / name).write_bytes(data)
    return files


def _is_whole_png(path: Path) -> bool:
    data = path.read_bytes()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS)
def test_kill_9_at_random_points_of_two_workers_then_resume(tmp_path, seed):
    from audioldm2_fast.batch.items import read_items
    from audioldm2_fast.config.compose import compose_config

    out, logs, prompts = tmp_path / "out", tmp_path / "logs", tmp_path / "prompts.txt"
    prompts.write_text("".join(f"the sound number {k}|item{k:03d}\n" for k in range(ITEMS)))
    user = _user_files(out)
    report_path = tmp_path / "report.json"
    cmd = [sys.executable, str(HELPERS / "fault_driver.py"), str(report_path), f"--out={out}", f"--logs={logs}"]
    cmd += [f"--prompts={prompts}", f"--seed={seed}", f"--kills={KILLS}", *OVERRIDES]
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(report_path.read_text())
    worker_logs = "\n".join(p.read_text() for p in sorted(logs.glob("*.log")))
    assert report["errors"] == [], worker_logs[-4000:]
    assert len(report["kills"]) >= KILLS
    assert {k["by"] for k in report["kills"]} >= {"driver", "journal", "link", "append", "unlink"}

    # Every item: one row per candidate, in all the dir's manifests together; each row's files whole.
    items = read_items(compose_config([*OVERRIDES, f"prompts_file={prompts}", f"output.dir={out}"]))
    rows = [json.loads(line) for m in sorted(out.glob("manifest*.jsonl")) for line in m.read_text().splitlines()]
    rows = [r for r in rows if r]
    expected = Counter({(item.id, c): 1 for item in items for c in range(item.num_waveforms)})
    assert Counter((r["item_id"], r["candidate"]) for r in rows) == expected  # 0 duplicates, 0 missing
    for row in rows:
        info = sf.info(str(out / row["path"]))
        assert info.frames == SAMPLES, row["path"]  # 0 truncated
        assert sf.read(str(out / row["path"]))[0].shape == (SAMPLES,)
        assert _is_whole_png(out / row["spectrogram"]), row["spectrogram"]

    # The user's files, untouched; nothing of ours beyond the rows' files and the dir's own records.
    for name, data in user.items():
        assert (out / name).read_bytes() == data, name
    named = {r["path"] for r in rows} | {r["spectrogram"] for r in rows}
    visible = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    stray = sorted(visible - named - set(user) - {n for n in visible if OURS.match(n)})
    assert stray == []
    hidden = {p.name for p in out.iterdir() if p.name.startswith(".")} - set(user) - {".audioldm2-fast"}
    assert all(SHARED_TEMP.match(n) for n in hidden), hidden
    assert list((out / ".audioldm2-fast" / "claims").glob("*.claim")) == []
    assert list((out / ".audioldm2-fast" / "tmp").iterdir()) == []

    last = [ln for ln in (logs / "worker-0.log").read_text().splitlines() if ln.startswith("audioldm2-fast: items")]
    assert last and " 0 failed" in last[-1] and "Traceback" not in worker_logs
    print(
        f"seed {seed}: {len(report['kills'])} kills ({dict(Counter(k['by'] for k in report['kills']))}), "
        f"{report['restarts']} worker starts, {len(items)} items, {len(rows)} rows, "
        f"{len(hidden)} hidden shared temporaries, kill phase {report['kill_phase_s']:.1f} s, "
        f"total {report['total_s']:.1f} s"
    )
