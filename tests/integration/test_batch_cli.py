"""Batch runs from the command line, in fresh processes: a killed run resumed, a sharded multirun, task=merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from support import run_cli

BASE = ["checkpoint=tiny", "steps=2", "audio_length_s=0.32", "progress=false"]
PROMPTS = ["rain", "wind", "thunder", "a dog barking", "church bells"]


def _run(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_cli(args, cwd, module=True, env=env)


def _rows(*manifests: Path) -> list[dict]:
    return [json.loads(line) for m in manifests for line in m.read_text().splitlines()]


def _final_line(stdout: str) -> str:
    (line,) = [ln for ln in stdout.splitlines() if ln.startswith("audioldm2-fast: items")]
    return line


@pytest.mark.slow
def test_a_killed_run_resumes_without_losing_or_duplicating_anything(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:4]) + "\n")
    out = tmp_path / "out"
    args = [*BASE, f"prompts_file={prompts}", "num_waveforms=2", f"output.dir={out}"]
    # Killed while appending the 4th row: item 1 is complete, item 2 has both files but only one of its rows.
    killed = _run([*args, "stages.writer.impl=batch_stages:KillingWriter"], tmp_path, env={"KILL_AT_ROW": "4"})
    assert killed.returncode == -signal.SIGKILL
    before = _rows(out / "manifest.jsonl")
    assert len(before) == 3 and before[0]["item_id"] == before[1]["item_id"] != before[2]["item_id"]
    first = (out / before[0]["path"]).read_bytes()

    resumed = _run(args, tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "1 skipped" in _final_line(resumed.stdout) and "3 done" in _final_line(resumed.stdout)
    assert "dropped 1 manifest row(s) left by a run that stopped before finishing it" in resumed.stdout  # Hydra logs
    assert resumed.stdout.count("by a run that stopped before finishing it") == 5  # the row, 2 audio files, 2 PNGs
    rows = _rows(out / "manifest.jsonl")
    assert Counter((r["item_id"], r["candidate"]) for r in rows) == Counter(
        {(item_id, c): 1 for item_id in {r["item_id"] for r in rows} for c in (0, 1)}
    )
    config_yaml = {p.name for p in out.glob("config-*.yaml")}
    assert len(rows) == 8 and len(config_yaml) == 2  # the killed run had another writer stage: another config
    assert list((out / ".audioldm2-fast" / "claims").iterdir()) == []  # every item complete: no claim left
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.jsonl", "batch_settings.json", "report.html", ".audioldm2-fast", *config_yaml]
        + [r["path"] for r in rows]
        + [r["spectrogram"] for r in rows]
    )
    assert (out / before[0]["path"]).read_bytes() == first  # the complete item was left alone

    again = _run(args, tmp_path)
    assert "0 done, 4 skipped, 0 failed" in _final_line(again.stdout) and len(_rows(out / "manifest.jsonl")) == 8


@pytest.mark.slow
def test_two_shard_multirun_on_the_local_launcher_covers_each_item_once(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    sweep = tmp_path / "sweep"
    proc = _run(
        [
            "-m",
            "hydra/launcher=local_gpus",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
            *BASE,
            f"prompts_file={prompts}",
            "batch_size=2",
            "shard.count=2",
            "shard.index=0,1",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    shards = [sweep / "0" / "manifest.shard-0-of-2.jsonl", sweep / "1" / "manifest.shard-1-of-2.jsonl"]
    shard_rows = _rows(*shards)
    assert sorted(r["prompt"] for r in shard_rows) == sorted(PROMPTS)  # every item exactly once
    assert {r["prompt"] for r in _rows(shards[0])} == set(PROMPTS[0::2])
    merged = _rows(sweep / "manifest.jsonl")  # merged by the sweep callback
    assert sorted(r["prompt"] for r in merged) == sorted(PROMPTS)
    assert all((sweep / r["path"]).is_file() for r in merged)
    assert (sweep / "summary.csv").is_file() and len(list(sweep.glob("*/job.json"))) == 2

    (sweep / "manifest.jsonl").unlink()
    merge = _run(["task=merge", f"dir={sweep}"], tmp_path)
    assert merge.returncode == 0, merge.stderr
    assert "5 row(s), 5 item(s), 0 duplicate(s)" in merge.stdout
    assert _rows(sweep / "manifest.jsonl") == merged


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_shard(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS[:2]) + "\n")
    sweep = tmp_path / "sweep"
    proc = _run(
        [
            "-m",
            "hydra/launcher=submitit_local",
            f"hydra.sweep.dir={sweep}",
            *BASE,
            f"prompts_file={prompts}",
            "shard.count=2",
            "shard.index=1",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert [r["prompt"] for r in _rows(sweep / "manifest.jsonl")] == [PROMPTS[1]]


def test_local_gpus_launcher_gives_each_slot_its_gpu():
    from hydra_plugins.audioldm2_fast_launcher.local_gpus import LocalGPUsLauncher

    launcher = LocalGPUsLauncher(gpus=[0, 1, "2,3"])
    assert launcher.n_jobs == 3
    assert [launcher.slot_env(slot)["CUDA_VISIBLE_DEVICES"] for slot in range(4)] == ["0", "1", "2,3", "0"]
    cpu = LocalGPUsLauncher(n_jobs=2)
    assert cpu.n_jobs == 2 and cpu.slot_env(1).get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def _hydra_launcher(option: str, *overrides: str):
    from hydra import compose, initialize_config_dir

    from audioldm2_fast.config.paths import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose("config", [f"hydra/launcher={option}", *overrides], return_hydra_config=True)
    return cfg.hydra.launcher


def test_shipped_launcher_configs_compose():
    local = _hydra_launcher("local_gpus", "hydra.launcher.gpus=[0,1]")
    assert local._target_.endswith("LocalGPUsLauncher") and list(local.gpus) == [0, 1]
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    slurm = _hydra_launcher("slurm", "hydra.launcher.partition=gpu")
    assert slurm._target_.endswith("SlurmLauncher") and slurm.partition == "gpu"
    assert (slurm.gpus_per_node, slurm.tasks_per_node, slurm.timeout_min) == (1, 1, 240)


def test_ray_launcher_config_composes_when_the_plugin_is_installed():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")
    ray = _hydra_launcher("ray_cluster", "hydra.launcher.ray.init.address=auto")
    assert ray.ray.init.address == "auto" and ray.ray.remote.num_gpus == 1 and ray.ray.remote.max_calls == 1
