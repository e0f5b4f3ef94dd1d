"""The model side of the server: one warm Generator, requests batched into chain calls, faults kept to their request.

A chain call for several requests is split in two. The stages up to the denoiser (text encoders, prior, UNet: the
work that batching speeds up) run once for all of them, in one ``GenerationState`` whose prompts each carry their
own seed, generator and guidance scale (the per-item fields batch runs use, so a request draws the same noise as
alone). The stages after it (VAE decoder, vocoder, ranker, writer) run per request, on the request's slice of that
state, with its own length, format and file names. With the kernels of ``batch_invariance`` on the CPU, a request's
audio is then the same bits whether it ran alone or with others.

Requests batch together when their shapes match: latent length (the length bucket, with ``compile.length_bucket_s``),
steps, guidance on or off, candidates per prompt, the T5 token count, which the GPT-2 prior sees through its
position ids (README, "Batch generation"), and the CLAP token length the text encoders run at (with its padding
bucket). A failure in the batched stages is retried request by request, so a request
that cannot run (out of memory, say) fails alone; a failure after them belongs to its request only.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Hashable
from typing import Any

import torch
from omegaconf import DictConfig

from ..config.requests import Request, parse_request
from ..config.schema import ServerConfig
from ..generator import Generator
from ..runtime.errors import Audioldm2FastError, OutOfMemory
from ..stages.geometry import AudioGeometry
from ..stages.state import GenerationState
from . import batch_invariance
from .serve_batcher import Job

log = logging.getLogger(__name__)

#: State fields with one row per prompt (two with guidance: negatives first), as the text side writes them.
TEXT_FIELDS = ("clap_embeds", "clap_mask", "t5_embeds", "t5_mask", "generated_embeds")
WARMUP_PROMPT = "warm-up"


class ServeError(Exception):
    """A request that failed in the chain: the HTTP status, a short type and a one-line reason."""

    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind, self.message = status, kind, message


@dataclasses.dataclass
class Served:
    """What a successful request gets: its manifest rows (best first) and its metadata."""

    records: list[dict[str, Any]]
    metadata: dict[str, Any]


class ServeChain:
    """A warm Generator and the two halves of its chain; ``run(jobs)`` is the batcher's chain call."""

    def __init__(self, generator: Generator, cfg: DictConfig, server: ServerConfig):
        self.generator, self.cfg, self.server = generator, cfg, server
        names = [stage.name for stage in generator.stages]
        split = max((i for i, s in enumerate(generator.stages) if "latents" in type(s).writes), default=len(names) - 1)
        self.batched = frozenset(names[: split + 1])
        self.stop_after = names[split]
        self.writers = frozenset(s.name for s in generator.stages if "records" in type(s).writes)
        self._denoiser = next((s for s in generator.stages if hasattr(s, "geometry")), None)
        self._tokenizer = generator.store.get("tokenizer_2")
        self._text = next((s for s in generator.stages if hasattr(s, "clap_length")), None)
        self._geometries: dict[float | None, AudioGeometry] = {}
        cpu_only = all(stage.device.type == "cpu" for stage in generator.stages if stage.name in self.batched)
        #: Whether a request's audio is bit-identical alone and batched (measured; see batch_invariance).
        self.batch_invariant = cpu_only and batch_invariance.check()
        self._kernel_device = "cpu" if cpu_only else "accelerator"

    # ------------------------------------------------------------------------------------------------ shapes

    def geometry(self, audio_length_s: float | None) -> AudioGeometry | None:
        """The request's frames and samples (ConfigError naming ``audio_length_s`` when it is too short)."""
        if self._denoiser is None:
            return None
        if audio_length_s not in self._geometries:
            self._geometries[audio_length_s] = self._denoiser.geometry(audio_length_s)
        return self._geometries[audio_length_s]

    def key(self, request: Request) -> Hashable:
        """Requests with equal keys can share a chain call (called in the worker thread: it tokenizes)."""
        geometry = self.geometry(request.audio_length_s)
        tokenizer = self._tokenizer
        tokens = len(tokenizer(request.prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids)
        guided = request.guidance_scale > 1.0
        texts = [request.negative_prompt or "", request.prompt] if guided else [request.prompt]
        clap_tokens = self._text.clap_length(texts) if self._text is not None else None
        return (
            geometry.mel_frames if geometry else request.audio_length_s,
            request.steps,
            guided,
            request.num_waveforms,
            tokens,
            clap_tokens,  # CLAP runs a batch at its longest prompt's length: equal lengths keep each request's own
        )

    # ------------------------------------------------------------------------------------------------ a chain call

    def run(self, jobs: list[Job], write: bool = True) -> None:
        """Run the jobs' requests in one call of the batched stages, then each one's own stages; set every future."""
        t0 = time.monotonic()
        try:
            with batch_invariance.batch_invariant_kernels(self._kernel_device):
                state = self.generator.run_stages(self._batch_state(jobs), stop_after=self.stop_after)
        except Exception as exc:  # noqa: BLE001 - one request's fault must not fail the others
            if len(jobs) > 1:
                log.warning("a batch of %d failed (%s); running its requests one by one", len(jobs), _line(exc))
                for job in jobs:
                    self.run([job], write)
                return
            jobs[0].future.set_exception(_failure(exc))
            return
        batched_s = time.monotonic() - t0
        for index, job in enumerate(jobs):
            try:
                job.future.set_result(self._finish(state, index, job, len(jobs), batched_s, write))
            except Exception as exc:  # noqa: BLE001
                job.future.set_exception(_failure(exc))

    def _batch_state(self, jobs: list[Job]) -> GenerationState:
        requests = [job.request for job in jobs]
        first = requests[0]
        state = self.generator.new_state(
            prompt=WARMUP_PROMPT,  # the prompts are set below: request text never goes through OmegaConf
            seed=first.seed,
            steps=first.steps,
            guidance_scale=first.guidance_scale,
            audio_length_s=first.audio_length_s,
            num_waveforms=first.num_waveforms,
        )
        negatives = [r.negative_prompt for r in requests]
        state.prompts = [r.prompt for r in requests]
        state.negative_prompts = None if all(n is None for n in negatives) else [n or "" for n in negatives]
        state.item_ids = [job.id for job in jobs]
        state.item_seeds = [r.seed for r in requests]
        state.item_generators = [torch.Generator("cpu").manual_seed(r.seed) for r in requests]
        state.item_guidance_scales = [r.guidance_scale for r in requests]

        def progress(step: int, timestep: Any, tensors: dict[str, Any]) -> None:
            for job in jobs:
                job.step = step + 1

        state.callback = progress
        return state

    def _finish(
        self, state: GenerationState, index: int, job: Job, batch_size: int, batched_s: float, write: bool
    ) -> Served:
        sub = request_state(state, index, job.request)
        geometry = self.geometry(job.request.audio_length_s)
        if geometry is not None:
            sub.waveform_length = geometry.waveform_length
        skip = self.batched if write else self.batched | self.writers
        result = self.generator.run(sub, skip=skip)
        if result.failed:
            raise ServeError(500, "non_finite", result.failed[0])
        own = {k: v for k, v in result.metadata.items() if k not in ("prompts", "negative_prompts")}
        metadata = {
            **job.request.settings(),
            **own,
            "id": job.id,
            "sample_rate": result.sample_rate,
            "batch_size": batch_size,
            "batched_stages_s": round(batched_s, 4),
            "queue_s": round((job.started or job.arrival) - job.arrival, 4),
            "timings": {name: round(s, 4) for name, s in result.timings.items()},
            "batch_invariant": self.batch_invariant,
        }
        return Served(records=list(result.records), metadata=metadata)

    # ------------------------------------------------------------------------------------------------ warm-up

    def warm_up(self) -> int:
        """Run each ``server.warmup`` shape before the first request: at every batch size up to ``max_batch`` when a
        stage is compiled (each size is its own graph), else once. Nothing is written. Returns the calls made."""
        compiled = self.generator.optimization("compile")
        sizes = range(1, self.server.max_batch + 1) if _compiles(compiled, self.generator) else [1]
        shapes = [(shape, sizes) for shape in self.server.warmup]
        counts = [shape.get("num_waveforms", int(self.cfg.num_waveforms)) for shape in self.server.warmup]
        if self.server.max_num_waveforms > 1 and all(n == 1 for n in counts):
            # Candidates are ranked by CLAP's audio branch, which loads on first use: load it now.
            shapes.append(({**(self.server.warmup or [{}])[0], "num_waveforms": 2}, [1]))
        calls = 0
        for shape, batch_sizes in shapes:
            request = parse_request({"prompt": WARMUP_PROMPT, "seed": 0, **shape}, self.cfg, self.server)
            for size in batch_sizes:
                jobs = [Job(id=f"warmup-{calls}-{k}", request=request) for k in range(size)]
                self.run(jobs, write=False)
                for job in jobs:
                    job.future.result()  # a warm-up that fails stops the server before it says ok
                calls += 1
        return calls


def request_state(state: GenerationState, index: int, request: Request) -> GenerationState:
    """Request ``index``'s slice of a batched state after the batched stages, as if it had run alone."""
    n, prompts = state.num_waveforms, state.batch_size
    rows = slice(index * n, (index + 1) * n)
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(state):
        value = getattr(state, f.name)
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            continue
        if f.name in TEXT_FIELDS:
            picked = [index, prompts + index] if value.shape[0] == 2 * prompts else [index]
            changes[f.name] = value[picked]
        elif value.shape[0] == prompts * n:
            changes[f.name] = value[rows]
    return dataclasses.replace(
        state,
        **changes,
        prompts=[state.prompts[index]],
        negative_prompts=None if state.negative_prompts is None else [state.negative_prompts[index]],
        seed=request.seed,
        guidance_scale=request.guidance_scale,
        audio_length_s=request.audio_length_s,
        item_ids=[state.item_ids[index]],
        item_seeds=[request.seed],
        item_generators=[state.item_generators[index]],
        item_guidance_scales=None,
        output_format=request.format,
        callback=None,
        records=[],
        failed={i - index * n: why for i, why in state.failed.items() if rows.start <= i < rows.stop},
        timings=dict(state.timings),
    )


def _compiles(compile_opt: Any, generator: Generator) -> bool:
    if compile_opt is None:
        return False
    return any(s.name in compile_opt.stages and compile_opt.mode_on(s.device.type) != "none" for s in generator.stages)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _failure(exc: BaseException) -> ServeError:
    """A chain exception as the request's error: out of memory, a stage's own error, or anything else."""
    if isinstance(exc, ServeError):
        return exc
    if isinstance(exc, (OutOfMemory, torch.OutOfMemoryError)):
        return ServeError(500, "out_of_memory", _line(exc))
    if isinstance(exc, Audioldm2FastError):
        return ServeError(500, "stage_failed", _line(exc))
    log.error("a request failed", exc_info=exc)
    return ServeError(500, "internal", f"{type(exc).__name__}: {_line(exc)}")
