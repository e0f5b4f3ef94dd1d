"""Claims, journals and what resume removes: one holder per item, a gone holder's item recovered exactly, nothing
removed on the evidence of a file name, and manifests shared by several writers."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from audioldm2_fast.batch.claims import CLAIMS, TEMPORARIES, Claims
from audioldm2_fast.batch.items import Item
from audioldm2_fast.batch.resume import ManifestView, settle
from audioldm2_fast.outputs.files import publish
from audioldm2_fast.outputs.journal import Journal, started_files
from audioldm2_fast.outputs.manifest import append_rows, drop_rows, read_manifest


def _write(data: bytes):
    return lambda tmp: Path(tmp).write_bytes(data)


def _journal(tmp_path: Path) -> tuple[Journal, Path]:
    temp_dir = tmp_path / "tmp"
    temp_dir.mkdir(exist_ok=True)
    fd = os.open(tmp_path / "journal", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    return Journal(fd, temp_dir), tmp_path / "journal"


def _entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_publish_takes_the_next_free_name_and_records_each_step(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "drums_c0.wav").write_bytes(b"the user's own")
    journal, path = _journal(tmp_path)
    made = publish(out, "drums_c0", ".wav", _write(b"ours"), journal)
    assert made.name == "drums_c0-1.wav" and made.read_bytes() == b"ours"
    assert (out / "drums_c0.wav").read_bytes() == b"the user's own"
    entries = _entries(path)
    temp = entries[0]["temp"]
    assert entries[1:] == [
        {"link": temp, "to": "drums_c0.wav"},
        {"link": temp, "to": "drums_c0-1.wav"},
        {"own": "drums_c0-1.wav"},
    ]
    assert list(journal.temp_dir.iterdir()) == []  # the temporary is gone
    assert started_files(entries, out, journal.temp_dir) == ({"drums_c0-1.wav"}, {temp})


def test_a_name_linked_but_not_yet_recorded_is_told_apart_from_a_users_file(tmp_path):
    out, temps = tmp_path / "out", tmp_path / "tmp"
    out.mkdir()
    temps.mkdir()
    (temps / "t.part").write_bytes(b"ours")
    os.link(temps / "t.part", out / "x_c0.wav")  # linked, then killed before the "own" entry
    (out / "x_c1.wav").write_bytes(b"the user's")  # a link the user's file made fail
    entries = [
        {"temp": "t.part"},
        {"link": "t.part", "to": "x_c1.wav"},
        {"link": "t.part", "to": "x_c0.wav"},
        {"own": "../outside.wav"},
        {"temp": "/etc/passwd"},
        {"own": "sub/dir.wav"},
    ]
    assert started_files(entries, out, temps) == ({"x_c0.wav"}, {"t.part"})


def test_one_holder_at_a_time_and_a_gone_holders_claim_is_recovered(tmp_path):
    first, second = Claims(tmp_path, "manifest.jsonl"), Claims(tmp_path, "manifest.shard-0-of-2.jsonl")
    held = first.acquire("rain")
    assert held is not None and held.previous is None
    assert second.acquire("rain") is None  # a live holder
    held.journal.record(temp="a.part")
    held.close()  # its process is gone: the kernel let go of the lock
    taken = second.acquire("rain")
    assert taken is not None
    assert [e.get("run") for e in taken.previous][0] == first.token and taken.previous[1] == {"temp": "a.part"}
    assert taken.previous[0]["manifest"] == "manifest.jsonl"
    taken.take_over(second.header("rain"))
    assert taken.entries() == [second.header("rain")] and taken.previous is None
    assert first.acquire("rain") is None
    taken.release()
    assert not (tmp_path / CLAIMS / "rain.claim").exists()
    again = first.acquire("rain")
    assert again is not None and again.previous is None
    again.release()


def test_a_waiting_run_gets_the_claim_when_its_holder_releases_it(tmp_path):
    holder, waiter = Claims(tmp_path, "manifest.jsonl"), Claims(tmp_path, "manifest.jsonl")
    held = holder.acquire("wind")
    got = []
    thread = threading.Thread(target=lambda: got.append(waiter.acquire("wind", wait=True)))
    thread.start()
    time.sleep(0.2)
    assert got == []  # still waiting
    held.release()
    thread.join(timeout=10)
    assert got and got[0] is not None and got[0].previous is None  # released, not taken over
    got[0].release()


def test_a_temporary_claim_of_a_killed_run_is_cleared_and_a_live_ones_is_not(tmp_path):
    Claims(tmp_path, "manifest.jsonl")
    abandoned = tmp_path / CLAIMS / ".rain.0123456789ab.new"
    abandoned.write_text("{}\n")
    Claims(tmp_path, "manifest.jsonl")
    assert not abandoned.exists()


def _item(item_id: str, candidates: int = 2) -> Item:
    return Item(item_id, 1, item_id, None, 0, None, candidates)


def _row(item_id: str, candidate: int, path: str) -> dict:
    return {"path": path, "item_id": item_id, "candidate": candidate, "spectrogram": None}


def test_a_gone_shards_item_is_cleared_exactly_by_a_run_with_another_shard_count(tmp_path, caplog):
    """A shard-0-of-2 run published both files of an item, wrote one of its rows, and was killed. A run over the
    whole file removes exactly those two files and that row, and nothing of the user's named like them."""
    out = tmp_path
    (out / "rain_c0-1.wav").write_bytes(b"the user's, named like ours")
    gone = Claims(out, "manifest.shard-0-of-2.jsonl")
    claim = gone.acquire("rain")
    made = [publish(out, f"rain_c{c}", ".wav", _write(b"ours"), claim.journal) for c in (0, 1)]
    append_rows(out / "manifest.shard-0-of-2.jsonl", [_row("rain", 0, made[0].name)])
    append_rows(out / "manifest.jsonl", [_row("other", 0, "other_c0.wav")])
    claim.close()

    run = Claims(out, "manifest.jsonl")
    view = ManifestView(out)
    recovered = run.acquire("rain")
    assert settle(recovered, _item("rain"), view, run.header("rain")) is False  # incomplete: generate it again
    assert read_manifest(out / "manifest.shard-0-of-2.jsonl") == []
    assert [r["item_id"] for r in read_manifest(out / "manifest.jsonl")] == ["other"]
    assert not made[0].exists() and not made[1].exists()
    assert (out / "rain_c0-1.wav").read_bytes() == b"the user's, named like ours"
    assert recovered.entries() == [run.header("rain")]
    assert "dropped 1 manifest row(s)" in caplog.text and "removing rain_c1.wav" in caplog.text
    recovered.release()
    view.close()


def test_a_complete_item_whose_holder_died_before_releasing_it_is_left_as_it_is(tmp_path):
    gone = Claims(tmp_path, "manifest.jsonl")
    claim = gone.acquire("rain")
    made = [publish(tmp_path, f"rain_c{c}", ".wav", _write(b"ours"), claim.journal) for c in (0, 1)]
    append_rows(tmp_path / "manifest.jsonl", [_row("rain", c, made[c].name) for c in (0, 1)])
    claim.close()
    run = Claims(tmp_path, "manifest.jsonl")
    view = ManifestView(tmp_path)
    recovered = run.acquire("rain")
    assert settle(recovered, _item("rain"), view, run.header("rain")) is True
    assert all(m.read_bytes() == b"ours" for m in made) and len(read_manifest(tmp_path / "manifest.jsonl")) == 2
    recovered.release()
    view.close()


def test_files_no_journal_names_are_left_in_place(tmp_path, caplog):
    """Rows of an incomplete item from a run without a journal: the rows go, the files stay."""
    (tmp_path / "rain_c0.wav").write_bytes(b"an older run's")
    append_rows(tmp_path / "manifest.jsonl", [_row("rain", 0, "rain_c0.wav")])
    run = Claims(tmp_path, "manifest.jsonl")
    view = ManifestView(tmp_path)
    claim = run.acquire("rain")
    assert settle(claim, _item("rain"), view, run.header("rain")) is False
    assert read_manifest(tmp_path / "manifest.jsonl") == []
    assert (tmp_path / "rain_c0.wav").read_bytes() == b"an older run's"
    assert "left in place" in caplog.text
    claim.release()
    view.close()


def test_the_manifest_view_tells_a_rewrite_from_an_append(tmp_path):
    """Rewrites replace the file; ext4 gives a new file a freed inode number at once, so the view must not judge by
    the number alone."""
    manifest = tmp_path / "manifest.jsonl"
    append_rows(manifest, [_row(f"i{k}", 0, f"i{k}_c0.wav") for k in range(6)])
    view = ManifestView(tmp_path)
    assert len(view.referenced()) == 6
    for k in range(3):  # each rewrite drops one item; the inode numbers may come round again
        drop_rows(manifest, lambda row, k=k: row["item_id"] == f"i{k}")
        append_rows(manifest, [_row(f"new{k}", 0, f"new{k}_c0.wav")])
        view.refresh()
        assert view.referenced() == {r["path"] for r in read_manifest(manifest)}
    view.close()


def test_an_append_after_a_torn_line_stays_whole(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    append_rows(manifest, [_row("a", 0, "a_c0.wav")])
    with open(manifest, "a") as fh:
        fh.write('{"path": "b_c0.wav", "item_')  # a process killed in the middle of its append
    append_rows(manifest, [_row("c", 0, "c_c0.wav"), _row("c", 1, "c_c1.wav")])
    assert [r["path"] for r in read_manifest(manifest)] == ["a_c0.wav", "c_c0.wav", "c_c1.wav"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "", ".."])
def test_the_state_dir_stays_inside_the_output_dir(tmp_path, bad):
    assert started_files([{"own": bad}, {"temp": bad}], tmp_path, tmp_path / TEMPORARIES) == (set(), set())
