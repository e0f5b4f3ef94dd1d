"""Batch runs over ``prompts_file``: resume what a previous run left, batch the rest, report items as they finish.

Resume works on the manifest: an item is complete when its manifest has a row for each of its candidates and each
row's file exists (the writer adds an item's rows only after all its files are in place, and writes files under a
temporary name first). Anything else of an item in this shard is regenerated: its stale rows are dropped from the
manifest and its leftover files (no row points at them) are removed, each with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ..config.fields import check_node
from ..config.schema import CheckpointConfig
from ..config.validate import validate_config
from ..generator import Generator
from ..outputs.files import write_bytes
from ..outputs.manifest import has_torn_line, manifest_name, read_manifest, write_manifest
from ..outputs.report import write_run_report
from ..runtime.errors import PROG, ConfigError, OutOfMemory, OutputError, StageError
from ..runtime.progress import progress_bar
from ..stages.schedulers import num_steps
from .items import Item, read_items, shard_items

log = logging.getLogger(__name__)

SETTINGS_FILE = "batch_settings.json"
_FILE_RE = re.compile(r"^(?P<id>.+)_c(?P<c>\d+)(?:-\d+)?\.(?:wav|flac|ogg|mp3|png)$")  # audio and its spectrogram
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[^.]+\.part$")


def resume(out_dir: Path, manifest: Path, items: list[Item]) -> set[str]:
    """The ids of this shard's complete items; clears what is left of its incomplete ones.

    Rows in the dir's other manifests (other shards, or an earlier run with another ``shard.count``) also count as
    complete, and their files are never removed; only this shard's own manifest is rewritten.
    """
    rows = read_manifest(manifest)
    others = [
        row
        for path in sorted({*out_dir.glob("manifest.jsonl"), *out_dir.glob("manifest.shard-*.jsonl")} - {manifest})
        for row in read_manifest(path)
    ]
    mine = {item.id: item for item in items}
    by_item: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows + others:
        if row.get("item_id") in mine:
            by_item.setdefault(row["item_id"], {}).setdefault(int(row.get("candidate", 0)), row)
    complete = {
        item_id
        for item_id, cands in by_item.items()
        if set(cands) == set(range(mine[item_id].num_waveforms))
        and all((out_dir / r["path"]).is_file() for r in cands.values())
    }
    kept = [r for r in rows if r.get("item_id") not in mine or r["item_id"] in complete]
    kept_unique = {(r.get("item_id"), r.get("candidate"), r.get("path")): r for r in kept}
    if len(kept_unique) != len(rows) or has_torn_line(manifest):
        dropped = len(rows) - len(kept_unique)
        if dropped:
            log.warning("%s: dropping %d row(s) of incomplete items; they are regenerated", manifest, dropped)
        write_manifest(manifest, list(kept_unique.values()))
    rows = [*kept_unique.values(), *others]
    referenced = {r["path"] for r in rows} | {r["spectrogram"] for r in rows if r.get("spectrogram")}
    _remove_leftovers(out_dir, referenced, set(mine), complete)
    return complete


def batch_settings(cfg: DictConfig) -> dict[str, Any]:
    """The settings an item's audio depends on besides its own fields; a resumed run must use the same."""
    ckpt = cfg.checkpoint
    scheduler_config = cfg.scheduler.get("config")
    keys = ("seed", "negative_prompt", "num_waveforms", "audio_length_s", "guidance_scale", "eta", "max_new_tokens")
    return {
        "checkpoint": check_node(ckpt, CheckpointConfig, "checkpoint").label,
        "scheduler": cfg.scheduler.name,
        "scheduler.config": OmegaConf.to_container(scheduler_config, resolve=True) if scheduler_config else {},
        "steps": num_steps(cfg),
        **{key: cfg.get(key) for key in keys},
        "precision": cfg.precision.name,
        "output.format": cfg.output.format,
        "output.subtype": cfg.output.get("subtype"),
    }


def check_settings(out_dir: Path, cfg: DictConfig) -> None:
    """Record the settings in ``batch_settings.json``, or refuse to resume a run made with other ones."""
    path = out_dir / SETTINGS_FILE
    settings = json.loads(json.dumps(batch_settings(cfg)))
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except ValueError:
            recorded = None
        if isinstance(recorded, dict) and recorded != settings:
            changed = [f"{k}: {recorded.get(k)!r} -> {v!r}" for k, v in settings.items() if recorded.get(k) != v]
            raise ConfigError(
                "output.dir",
                f"{str(out_dir)!r} holds a batch run made with other settings ({'; '.join(changed)}); "
                "resume it with its own settings, or use a new output.dir",
            )
        if isinstance(recorded, dict):
            return
    write_bytes(path, (json.dumps(settings, indent=2) + "\n").encode())


def _remove_leftovers(out_dir: Path, referenced: set[str], mine: set[str], complete: set[str]) -> None:
    """Remove this shard's files that no manifest row names (of incomplete items), and its interrupted writes."""
    for entry in os.scandir(out_dir):
        temp = _TEMP_RE.match(entry.name)
        match = _FILE_RE.match(temp.group("name") if temp else entry.name)
        if not match or match.group("id") not in mine or entry.name in referenced or not entry.is_file():
            continue
        if not temp and match.group("id") in complete:
            continue  # e.g. a -1 copy from an earlier run: not ours to judge
        log.warning("removing %s: left by an interrupted run (no manifest row); its item is regenerated", entry.path)
        os.unlink(entry.path)


def make_batches(items: list[Item], batch_size: int, token_length: Callable[[str], int]) -> list[list[Item]]:
    """Batches of up to ``batch_size`` items sharing audio length, candidate count and T5 token length.

    Equal token lengths mean no padding inside a batch, which the GPT-2 prior would otherwise see (through its
    position ids): so an item's audio does not depend on its batch-mates, and compiled graphs keep their shapes.
    """
    groups: dict[tuple, list[Item]] = {}
    for item in items:
        key = (item.audio_length_s, item.num_waveforms, token_length(item.prompt) if batch_size > 1 else 0)
        groups.setdefault(key, []).append(item)
    return [group[i : i + batch_size] for group in groups.values() for i in range(0, len(group), batch_size)]


def _t5_length(generator: Any) -> Callable[[str], int]:
    tokenizer = generator.store.get("tokenizer_2")
    limit = tokenizer.model_max_length

    def length(prompt: str) -> int:
        return len(tokenizer(prompt, truncation=True, max_length=limit).input_ids)

    return length


def _state(generator: Any, batch: list[Item], out_dir: Path | None = None, manifest: str | None = None):
    negatives = [item.negative_prompt for item in batch]
    state = generator.new_state(
        prompt=[item.prompt for item in batch],
        negative_prompt=None if all(n is None for n in negatives) else [n or "" for n in negatives],
        seed=batch[0].seed,
        audio_length_s=batch[0].audio_length_s,
        num_waveforms=batch[0].num_waveforms,
        prompts_file=None,
        batch_size=1,
        shard={"index": 0, "count": 1},
    )
    state.item_ids = [item.id for item in batch]
    state.item_seeds = [item.seed for item in batch]
    state.item_generators = [torch.Generator("cpu").manual_seed(item.seed) for item in batch]
    if out_dir is not None:
        state.output_dir = out_dir
    if manifest is not None:
        state.manifest = manifest
    return state


def run_batch(cfg: DictConfig, generator: Any = None) -> dict[str, Any]:
    """Generate every item of this shard that is not complete yet; print a final line whatever happens."""
    t0 = time.perf_counter()
    validate_config(cfg)  # a multirun job gets here unchecked; nothing below may see a bad value
    items = shard_items(read_items(cfg), int(cfg.shard.index), int(cfg.shard.count))
    out_dir = Path(str(cfg.output.dir)).expanduser()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"output.dir: cannot create {str(out_dir)!r}: {exc.strerror or exc}") from None
    check_settings(out_dir, cfg)
    manifest = out_dir / manifest_name(int(cfg.shard.index), int(cfg.shard.count))
    complete = resume(out_dir, manifest, items)
    pending = [item for item in items if item.id not in complete]
    counts = {"done": 0, "skipped": len(items) - len(pending), "failed": 0}
    audio_s, failed_ids, load_s = 0.0, [], 0.0
    try:
        if pending:
            if generator is None:
                generator = Generator(cfg)
                load_s = generator.load_time_s
            batches = make_batches(pending, int(cfg.batch_size), _t5_length(generator))
            bar = progress_bar(
                total=len(items), initial=counts["skipped"], enabled=cfg.progress, desc="items", unit="item"
            )
            with bar:
                for batch in batches:
                    try:
                        result = generator.run(_state(generator, batch, out_dir, manifest.name))
                    except (StageError, OutOfMemory, torch.OutOfMemoryError) as exc:
                        counts["failed"] += len(batch)
                        failed_ids += [item.id for item in batch]
                        log.error("items %s failed: %s", ", ".join(i.id for i in batch), exc)
                    else:
                        # Items with a dropped (non-finite) waveform are incomplete: failed now, redone on resume.
                        written = Counter(r["prompt_index"] for r in result.records)
                        for index, item in enumerate(batch):
                            if written[index] == result.num_waveforms:
                                counts["done"] += 1
                            else:
                                counts["failed"] += 1
                                failed_ids.append(item.id)
                        audio_s += sum(r["audio_length_s"] for r in result.records)
                    bar.update(len(batch))
            if counts["done"] and cfg.output.get("report", True) and "writer" in cfg.pipeline.chain:
                write_run_report(out_dir)  # once per run: rebuilding it per batch would reread the whole manifest
    finally:
        wall = time.perf_counter() - t0
        shard = f" (shard {cfg.shard.index} of {cfg.shard.count})" if cfg.shard.count > 1 else ""
        print(
            f"{PROG}: items{shard}: {counts['done']} done, {counts['skipped']} skipped, {counts['failed']} failed; "
            f"{audio_s:.2f} s of audio in {wall:.2f} s wall time -> {manifest}",
            file=sys.stdout,
            flush=True,
        )
    if failed_ids:
        raise StageError("batch", f"{len(failed_ids)} item(s) failed ({', '.join(failed_ids[:5])}); rerun to retry")
    return {
        "task": "generate",
        "e2e_s": wall,
        "load_s": load_s,
        "items": counts,
        "audio_s": audio_s,
        "outputs": [str(manifest)],
    }
