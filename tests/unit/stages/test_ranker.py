"""Candidates are ranked per prompt by CLAP similarity, best first, and every candidate is kept with its score."""

from __future__ import annotations

import json

import numpy as np
import torch


def test_ranks_per_prompt_and_keeps_every_candidate(make_generator, tmp_path):
    out = tmp_path / "ranked"
    gen = make_generator("prompt=[a dog barking,soft piano music]", "num_waveforms=3", out=out)
    result = gen.generate()
    assert result.waveforms.shape[0] == 6
    ranks = result.ranks.reshape(2, 3)
    for row in ranks:
        assert sorted(row.tolist()) == [1, 2, 3]

    # Scores are each candidate against its OWN prompt: recompute them independently.
    ranker = gen.stages[[s.name for s in gen.stages].index("ranker")]
    audio = ranker.audio_embeddings(torch.from_numpy(result.waveforms), result.sample_rate)
    text = ranker.text_embeddings(result.prompts)
    expected = torch.stack([audio[i] @ text[i // 3] for i in range(6)]).numpy()
    np.testing.assert_allclose(result.scores, expected, atol=1e-5)
    for p in range(2):
        s = result.scores[p * 3 : (p + 1) * 3]
        assert result.ranks[p * 3 + int(np.argmax(s))] == 1

    # The best candidate comes first for each prompt, in the result and in the manifest.
    best = result.candidates(0)[0]
    np.testing.assert_array_equal(best, result.waveforms[int(np.where(result.ranks[:3] == 1)[0][0])])
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    assert [(r["prompt_index"], r["rank"]) for r in rows] == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2), (1, 3)]
    assert all(isinstance(r["score"], float) for r in rows)
    assert len({r["path"] for r in rows}) == 6 and all((out / r["path"]).is_file() for r in rows)


def test_long_audio_is_scored_over_windows_deterministically(make_generator):
    gen = make_generator("prompt=x", "num_waveforms=2")
    ranker = gen.stages[[s.name for s in gen.stages].index("ranker")]
    ranker._ensure_loaded()
    torch.manual_seed(0)
    long_audio = torch.randn(2, 16000 * 12) * 0.1  # longer than CLAP's 10 s window
    a = ranker.audio_embeddings(long_audio, 16000)
    b = ranker.audio_embeddings(long_audio, 16000)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2))


def test_single_candidate_is_not_ranked(make_generator):
    result = make_generator("prompt=x").generate()
    assert result.ranks is None and result.records[0]["rank"] == 1 and result.records[0]["score"] is None
