"""Tokenizers built in code, for checkpoints that have no tokenizer files (``tiny``, the synthetic ones).

A byte-level BPE without merges stands in for CLAP's RoBERTa tokenizer and a unigram vocabulary for Flan-T5's: any
text tokenizes, and the ids carry no meaning.
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
def roberta_tokenizer(model_max_length: int, vocab_size: int | None = None):
    """Byte-level BPE without merges, RoBERTa's special tokens; padded with unused ids to ``vocab_size`` (with
    ``<mask>`` last) when given."""
    # The tokenizer libraries only when a checkpoint without tokenizer files is built.
    from tokenizers import pre_tokenizers
    from transformers import RobertaTokenizerFast

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    for symbol in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[symbol] = len(vocab)
    while vocab_size is not None and len(vocab) < vocab_size - 1:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    vocab["<mask>"] = len(vocab)
    return RobertaTokenizerFast(vocab=vocab, merges=[], model_max_length=model_max_length)


def unigram_t5_tokenizer(model_max_length: int, pieces: Iterable[tuple[str, float]], extra_ids: int = 0):
    """A T5 tokenizer over T5's special pieces followed by ``pieces`` (piece, log-probability score)."""
    from transformers import T5TokenizerFast  # as above

    vocab = [*T5_SPECIALS, *pieces]
    return T5TokenizerFast(vocab=vocab, extra_ids=extra_ids, model_max_length=model_max_length)
