"""Tokenizers built in code, for checkpoints that have no tokenizer files (``tiny``, the synthetic ones).

A byte-level BPE stands in for CLAP's RoBERTa tokenizer and a unigram vocabulary for Flan-T5's: any text tokenizes,
and the ids carry no meaning. For the synthetic checkpoints, whose point is realistic speed and memory, both give the
common caption words a token of their own, so usual prompts get about their real token counts (the founding prompt:
15 CLAP tokens, as RoBERTa's 17); without merges, CLAP would see one token per character.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

#: Common audio-caption words that get a piece of their own, so usual prompts get about their real token counts.
CAPTION_WORDS = (
    "the", "a", "an", "of", "and", "with", "in", "on", "to", "sound", "music", "drums", "rain", "low", "quality",
    "average", "high", "waves", "dog", "bark", "piano", "guitar", "birds", "wind", "engine", "car", "water", "crowd",
    "people", "talking", "footsteps", "bell", "jazz", "rock", "techno", "beat", "bass", "loud", "soft", "background",
    "gently", "crashing", "brazilian", "samba", "hammer", "hitting", "wooden", "surface",
)  # fmt: skip
WORD = "\u2581"  # SentencePiece's word-start marker
T5_SPECIALS = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (WORD, -2.0)]


@functools.lru_cache(maxsize=8)
def roberta_tokenizer(model_max_length: int, vocab_size: int | None = None, words: tuple[str, ...] = ()):
    """Byte-level BPE with RoBERTa's special tokens; padded with unused ids to ``vocab_size`` (with ``<mask>`` last)
    when given. Each of ``words`` (lower case and capitalised, after a space or not) becomes one token through a
    chain of merges; everything else stays one token per byte."""
    # The tokenizer libraries only when a checkpoint without tokenizer files is built.
    from tokenizers import pre_tokenizers
    from transformers import RobertaTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    merges = _word_merges(words, vocab)
    while vocab_size is not None and len(vocab) < vocab_size - 1:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizerFast(vocab=vocab, merges=merges, model_max_length=model_max_length)


def _word_merges(words: Iterable[str], vocab: dict[str, int]) -> list[tuple[str, str]]:
    """Left-to-right merges that build each word from its bytes, adding every prefix to ``vocab``. Words after a
    space (``Ġword``) come first, so their merges outrank those of the same letters at a text's start."""
    space = "\u0120"  # byte-level BPE's mark for a leading space
    forms = [*(space + w for w in words), *(space + w.capitalize() for w in words), *words]
    forms += [w.capitalize() for w in words]
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for form in forms:
        for end in range(2, len(form) + 1):
            pair = (form[: end - 1], form[end - 1])
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
                vocab.setdefault(form[:end], len(vocab))
    return merges


def unigram_t5_tokenizer(model_max_length: int, pieces: Iterable[tuple[str, float]], extra_ids: int = 0):
    """A T5 tokenizer over T5's special pieces followed by ``pieces`` (piece, log-probability score)."""
    from transformers import T5TokenizerFast  # as above

    vocab = [*T5_SPECIALS, *pieces]
    return T5TokenizerFast(vocab=vocab, extra_ids=extra_ids, model_max_length=model_max_length)
