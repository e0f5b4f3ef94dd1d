"""Batch runs over prompts_file: parsing, item ids and seeds, sharding, batching, and item independence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
from omegaconf import OmegaConf
from support import FAST

from audioldm2_fast.batch.items import Item, item_seed, read_items, shard_items
from audioldm2_fast.batch.run import make_batches, run_batch
from audioldm2_fast.config.compose import compose_config
from audioldm2_fast.runtime.errors import ConfigError


def _cfg(tmp_path, prompts_file, *overrides):
    return compose_config([*FAST, f"prompts_file={prompts_file}", f"output.dir={tmp_path / 'out'}", *overrides])


def test_txt_jsonl_and_csv_give_the_same_items(tmp_path):
    (tmp_path / "p.txt").write_text("rain on a roof\n\n# a comment\ndog barking|dog\n")
    (tmp_path / "p.jsonl").write_text(
        json.dumps({"prompt": "rain on a roof"}) + "\n" + json.dumps({"prompt": "dog barking", "name": "dog"}) + "\n"
    )
    (tmp_path / "p.csv").write_text("prompt,name\nrain on a roof,\ndog barking,dog\n")
    parsed = [read_items(_cfg(tmp_path, tmp_path / f"p.{ext}", "seed=5")) for ext in ("txt", "jsonl", "csv")]
    ids = [[item.id for item in items] for items in parsed]
    assert ids[0] == ids[1] == ids[2] and ids[0][1] == "dog" and ids[0][0].startswith("rain-on-a-roof-")
    seeds = [[item.seed for item in items] for items in parsed]
    assert seeds[0] == seeds[1] == seeds[2] == [item_seed(5, ids[0][0]), item_seed(5, "dog")]
    assert [item.line for item in parsed[0]] == [1, 4]


def test_per_line_fields_override_the_run_values(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(
        "prompt,negative_prompt,seed,name,audio_length_s,num_waveforms\nrain,hiss,7,r,0.5,3\nwind,,,,,\nwind,,,,,\n"
    )
    rain, wind, wind_again = read_items(_cfg(tmp_path, path, "negative_prompt=noise", "num_waveforms=2"))
    assert (rain.id, rain.negative_prompt, rain.seed, rain.audio_length_s, rain.num_waveforms) == (
        "r",
        "hiss",
        7,
        0.5,
        3,
    )
    assert (wind.negative_prompt, wind.audio_length_s, wind.num_waveforms) == ("noise", 1.0, 2)
    assert wind.id != wind_again.id and wind.seed != wind_again.seed  # a repeated line is another item


def test_item_ids_do_not_depend_on_line_position(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("rain\nwind\n")
    b.write_text("thunder\nwind\nrain\n")
    ids_a = {item.prompt: (item.id, item.seed) for item in read_items(_cfg(tmp_path, a))}
    ids_b = {item.prompt: (item.id, item.seed) for item in read_items(_cfg(tmp_path, b))}
    assert ids_a["rain"] == ids_b["rain"] and ids_a["wind"] == ids_b["wind"]


def test_malformed_lines_are_reported_with_their_numbers_before_loading(tmp_path):
    from audioldm2_fast.cli import check_overrides

    path = tmp_path / "p.jsonl"
    path.write_text(
        '{"prompt": "ok"}\n{"prompt": "x", "seed": -1}\nnot json\n\n{"promt": "typo"}\n'
        '{"prompt": "a", "name": "n"}\n{"prompt": "b", "name": "n"}\n{"prompt": "c", "name": "../up"}\n'
    )
    with pytest.raises(ConfigError) as info:
        check_overrides([*FAST, f"prompts_file={path}", f"output.dir={tmp_path / 'out'}"])
    message = str(info.value)
    assert message.startswith("prompts_file: ")
    for expected in ("line 2: seed", "line 3: not valid JSON", "line 5: unknown field(s) ['promt']", "line 7: name"):
        assert expected in message
    assert "line 8: name '../up'" in message and "line 1:" not in message and "line 6:" not in message
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["prompt=x"], "prompts_file"),
        (["shard.count=2", "shard.index=2"], "shard.index"),
        (["batch_size=0"], "batch_size"),
        (["scheduler=dpm_sde"], "scheduler"),
    ],
)
def test_bad_batch_settings_name_their_key(tmp_path, overrides, key):
    from audioldm2_fast.config.validate import validate_config

    (tmp_path / "p.txt").write_text("rain\n")
    with pytest.raises(ConfigError) as info:
        validate_config(_cfg(tmp_path, tmp_path / "p.txt", *overrides))
    assert info.value.key == key


def test_shards_cover_every_item_exactly_once():
    items = [Item(f"i{k}", k, "p", None, k, None, 1) for k in range(11)]
    shards = [shard_items(items, index, 3) for index in range(3)]
    ids = [item.id for shard in shards for item in shard]
    assert sorted(ids) == sorted(item.id for item in items) and len(ids) == len(set(ids))
    assert [len(s) for s in shards] == [4, 4, 3]


def test_batches_share_token_length_audio_length_and_candidates():
    lengths = {"a": 2, "bb": 3, "c": 2, "dd": 3, "e": 2}
    items = [Item(p, k, p, None, k, None, 1) for k, p in enumerate(lengths)]
    items.append(Item("f", 9, "f", None, 9, 0.5, 1))
    items.append(Item("g", 10, "g", None, 10, None, 2))
    batches = make_batches(items, 2, lambda item: lengths.get(item.prompt, 2))
    assert [[item.id for item in batch] for batch in batches] == [["a", "c"], ["e"], ["bb", "dd"], ["f"], ["g"]]


def _float_wavs(out_dir):
    rows = [json.loads(line) for line in (out_dir / "manifest.jsonl").read_text().splitlines()]
    return {(r["item_id"], r["candidate"]): sf.read(out_dir / r["path"], dtype="float32")[0] for r in rows}


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "euler_ancestral"])  # the second draws noise at every step
def test_an_item_alone_and_in_a_batch_gives_the_same_audio(tmp_path, scheduler):
    from audioldm2_fast.batch.run import _state
    from audioldm2_fast.generator import Generator

    batch_file = tmp_path / "batch.jsonl"
    lines = [
        {"prompt": "waves on a beach", "negative_prompt": "hiss"},
        {"prompt": "wind in the trees"},
        {"prompt": "church bells", "seed": 11},
    ]
    batch_file.write_text("".join(json.dumps(line) + "\n" for line in lines))
    cfg = _cfg(
        tmp_path,
        batch_file,
        "batch_size=3",
        "num_waveforms=2",
        "output.subtype=FLOAT",
        "audio_length_s=0.32",
        f"scheduler={scheduler}",
    )
    cfg.pipeline.chain = ["text_encoders", "prior", "denoiser", "vae_decoder", "vocoder", "writer"]  # no ranking
    generator = Generator(cfg)
    tokens = generator.store.get("tokenizer_2")
    assert len({len(tokens(line["prompt"]).input_ids) for line in lines}) == 1  # so all three share one batch
    summary = run_batch(cfg, generator)
    assert summary["items"] == {"done": 3, "skipped": 0, "failed": 0, "done_elsewhere": 0}
    assert summary["audio_s"] == pytest.approx(3 * 2 * 0.32)
    together = _float_wavs(tmp_path / "out")

    for k, line in enumerate(lines):  # each line alone, from its own file and its own output dir
        alone_file = tmp_path / f"alone{k}.jsonl"
        alone_file.write_text(json.dumps(line) + "\n")
        alone = OmegaConf.merge(cfg, {"prompts_file": str(alone_file), "output": {"dir": str(tmp_path / f"alone{k}")}})
        run_batch(alone, generator)
        for key, audio in _float_wavs(tmp_path / f"alone{k}").items():
            np.testing.assert_allclose(together[key], audio, rtol=0, atol=1e-5)
    item_id = key[0]
    assert len(together) == 6 and not np.allclose(together[(item_id, 0)], together[(item_id, 1)])

    # Why batches are formed by T5 token length: with padding, the prior sees other positions and the audio changes.
    longer = Item("long", 1, "a long prompt about the sound of a dog barking at night", None, 1, 0.32, 1)
    short = Item("short", 2, "rain", None, 2, 0.32, 1)
    alone = generator.run(_state(generator, [short])).waveforms[0]
    padded = generator.run(_state(generator, [short, longer])).waveforms[0]
    assert np.abs(alone - padded).max() > 1e-3


def test_a_failing_batch_is_counted_and_the_others_go_on(tmp_path, capsys):
    from audioldm2_fast.runtime.errors import StageError

    path = tmp_path / "p.txt"
    path.write_text("rain\nnan here\nwind\n")
    cfg = _cfg(tmp_path, path, "stages.vocoder.impl=batch_stages:NaNVocoder", "audio_length_s=0.32", "steps=2")
    with pytest.raises(StageError, match="1 item"):
        run_batch(cfg)
    assert "items: 2 done, 0 skipped, 1 failed; 0.64 s of audio" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["prompt"] for r in rows) == ["rain", "wind"]

    with pytest.raises(ConfigError, match=r"output.dir: .*other settings \(steps: 2 -> 3\)"):
        run_batch(_cfg(tmp_path, path, "stages.vocoder.impl=batch_stages:NaNVocoder", "audio_length_s=0.32", "steps=3"))


def test_a_name_that_collides_with_another_items_id_is_refused(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("wind\nrain\n")
    rain_id = read_items(_cfg(tmp_path, path))[1].id
    path.write_text(f"wind|{rain_id}\nrain\n")
    with pytest.raises(ConfigError, match=f"line 2: item id '{rain_id}' is already used on line 1"):
        read_items(_cfg(tmp_path, path))


def test_merge_keeps_each_item_candidate_once_and_can_run_again(tmp_path):
    from audioldm2_fast.outputs.manifest import merge_manifests

    def write(path, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))

    write(tmp_path / "0" / "manifest.shard-0-of-2.jsonl", [{"path": "a_c0.wav", "item_id": "a", "candidate": 0}])
    write(
        tmp_path / "1" / "manifest.shard-1-of-2.jsonl",
        [{"path": "b_c0.wav", "item_id": "b", "candidate": 0}, {"path": "b_c1.wav", "item_id": "b", "candidate": 1}],
    )
    write(tmp_path / "manifest.shard-0-of-2.jsonl", [{"path": "a_c0.wav", "item_id": "a", "candidate": 0}])  # again
    report = merge_manifests(tmp_path)
    assert (report["rows"], report["items"], report["duplicates"], len(report["inputs"])) == (3, 2, 1, 3)
    merged = [json.loads(line) for line in (tmp_path / "manifest.jsonl").read_text().splitlines()]
    assert [r["path"] for r in merged] == ["0/a_c0.wav", "1/b_c0.wav", "1/b_c1.wav"]  # job dirs in order, then dir
    assert merge_manifests(tmp_path)["rows"] == 3  # merging again reads its own output and adds nothing
    assert (tmp_path / "manifest.jsonl").read_text().count("\n") == 3


def test_line_breaks_inside_a_line_do_not_split_it(tmp_path):
    """Lines end at line feeds only: U+2028 is text in a .txt line and in a JSON string; a quoted CSV field keeps its
    line break, and the prompt check then refuses it as it refuses one in prompt=, naming the record's first line."""
    (tmp_path / "p.txt").write_text("rain\u2028drops\r\nwind\n", encoding="utf-8")
    (tmp_path / "p.jsonl").write_text('{"prompt": "rain\u2028drops"}\n{"prompt": "wind"}\n', encoding="utf-8")
    for name in ("p.txt", "p.jsonl"):
        items = read_items(_cfg(tmp_path, tmp_path / name))
        assert [(item.line, item.prompt) for item in items] == [(1, "rain\u2028drops"), (2, "wind")]
    (tmp_path / "p.csv").write_text('prompt,seed\nrain,1\n"wind\nin trees",2\n"a\x1bb",3\n')
    with pytest.raises(ConfigError) as info:
        read_items(_cfg(tmp_path, tmp_path / "p.csv"))
    message = str(info.value)
    assert "line 3: prompt contains the control character U+000A at position 4" in message
    assert "line 5: prompt contains the control character U+001B" in message


def test_the_users_files_beside_the_items_are_never_touched(tmp_path):
    """Files named exactly as an item's files (and temporaries) would be, there before the run: the run writes next
    to them, a rerun resumes, and every one of them keeps its bytes."""
    out = tmp_path / "out"
    out.mkdir()
    mine = {
        "drums_c0.wav": b"my drums",
        "drums_c0.png": b"my drawing",
        ".drums_c0.wav.abcdefgh.part": b"hidden, mine",
        "drums_c1-1.wav": b"mine too",
    }
    for name, data in mine.items():
        (out / name).write_bytes(data)
    path = tmp_path / "p.txt"
    path.write_text("samba drums|drums\n")
    cfg = _cfg(tmp_path, path, "num_waveforms=2", "audio_length_s=0.32", "steps=2")
    assert run_batch(cfg)["items"]["done"] == 1
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["path"] for r in rows) == ["drums_c0-1.wav", "drums_c1.wav"]
    assert run_batch(cfg)["items"] == {"done": 0, "skipped": 1, "failed": 0, "done_elsewhere": 0}
    for name, data in mine.items():
        assert (out / name).read_bytes() == data, name


def test_a_claim_left_on_a_complete_item_is_removed_by_the_next_run(tmp_path):
    """A run killed after an item's last manifest row but before removing its claim: the next run, with nothing left
    to generate, removes that claim (and the temporaries its journal names) and loads no model."""
    from audioldm2_fast.batch.claims import CLAIMS, TEMPORARIES, Claims

    path = tmp_path / "p.txt"
    path.write_text("samba drums|drums\n")
    cfg = _cfg(tmp_path, path, "audio_length_s=0.32", "steps=2")
    assert run_batch(cfg)["items"]["done"] == 1
    out = tmp_path / "out"
    gone = Claims(out, "manifest.jsonl").acquire("drums")
    gone.journal.record(temp="left.part")
    (out / TEMPORARIES / "left.part").write_bytes(b"half")
    gone.close()  # its process is gone with the claim still there
    assert (out / CLAIMS / "drums.claim").exists()
    before = (out / "manifest.jsonl").read_bytes()
    summary = run_batch(cfg)
    assert summary["items"] == {"done": 0, "skipped": 1, "failed": 0, "done_elsewhere": 0}
    assert summary["load_s"] == 0.0
    assert list((out / CLAIMS).iterdir()) == [] and list((out / TEMPORARIES).iterdir()) == []
    assert (out / "manifest.jsonl").read_bytes() == before
