"""The Generator: the whole chain in one file.

Building one (``Generator(cfg)`` or ``Generator.from_config(...)``) takes these steps, each before the next:

1. validate the config (schema, rules, every optimisation's rule) and the chain (stage classes, their settings, the
   state fields each reads and writes), all without loading anything;
2. resolve the checkpoint to a directory (or a synthetic architecture) and open its component store;
3. let each optimisation resolve the config it needs (``memory.budget_gb`` plans from ``meta`` twins here): the
   result is a new config value, ``self.cfg``, recorded with the run, and never changed afterwards;
4. check what only the checkpoint and the device can bound (:func:`check_before_loading`): the component configs
   against their classes and weights, the scheduler, GPT-2's positions, the audio length, the memory of one call;
5. build each stage with its own settings on its own device and dtype, and load its weights;
6. apply the optimisations, in their order: attention processors, placement and offload, compiling.

A call (``gen(prompt=..., seed=...)``) makes a ``GenerationState`` and runs it through the stages, each around its
optimisations' hooks, with a finite-value check and timing at every stage boundary. It plays the Lightning
Trainer's part: it owns placement, timing and the hooks; the stages own the model work.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import diffusers
import torch
import transformers
from omegaconf import DictConfig, OmegaConf

from .accel.capacity import Blame, check_fits
from .accel.oom import describe_oom, is_out_of_memory
from .api import CALL_KEYS, OUTPUT_TYPES, GenerationResult, overrides_from_keys
from .checkpoints.resolve import SYNTHETIC_PREFIX, resolve_checkpoint
from .checkpoints.store import ComponentStore
from .checkpoints.synthetic import make_store
from .checkpoints.verify import check_component_configs
from .config.fields import check_node
from .config.optimization import Optimization, Plan
from .config.overrides import compose_command_line
from .config.paths import config_groups
from .config.prompts import negative_prompt_list, prompt_list
from .config.schema import CheckpointConfig
from .config.validate import validate_config
from .outputs.manifest import manifest_name
from .outputs.provenance import resolved_config_yaml, text_hash
from .runtime.devices import synchronize
from .runtime.errors import ConfigError
from .runtime.progress import progress_bar
from .stages.base import Stage, dtype_name, stage_placement
from .stages.denoiser import store_geometry
from .stages.finite import check_stage_output, describe, tensor_fields
from .stages.prior import check_positions, positions_needed
from .stages.registry import ChainEntry, check_chain
from .stages.schedulers import check_scheduler, num_steps
from .stages.state import GenerationState, RunInfo

log = logging.getLogger(__name__)


@dataclass
class ChainPreview:
    """The chain before anything loads: what an optimisation's ``resolve`` may look at."""

    store: ComponentStore
    entries: list[ChainEntry]
    placements: dict[str, tuple[torch.device, torch.dtype]]
    plan: Plan
    num_prompts: int
    _meta: dict[str, dict[str, torch.nn.Module]] | None = field(default=None, repr=False)

    @property
    def optimizations(self) -> dict[str, Optimization]:
        return dict(self.plan.optimizations)

    def meta_modules(self) -> dict[str, dict[str, torch.nn.Module]]:
        """``{stage: {component: module}}`` on ``meta`` in each stage's dtype; a shared component appears under the
        first stage that uses it only."""
        if self._meta is None:
            seen: set[str] = set()
            self._meta = {}
            for entry in self.entries:
                dtype = self.placements[entry.name][1]
                modules = {}
                for component in entry.cls.components:
                    if component not in seen and (module := self.store.meta(component, dtype)) is not None:
                        modules[component] = module
                        seen.add(component)
                self._meta[entry.name] = modules
        return self._meta


class Generator:
    """Text-to-audio with AudioLDM 2 as a chain of configured stages. Built once, called many times.

    >>> gen = Generator.from_config(checkpoint="tiny", steps=4)
    >>> result = gen(prompt="rain on a tin roof", seed=3)
    """

    def __init__(self, cfg: DictConfig, require_prompt: bool = True):
        t0 = time.perf_counter()
        validated = validate_config(cfg, require_prompt=require_prompt)
        entries = check_chain(cfg, validated.optimizations)
        self.checkpoint_dir: Path = resolve_checkpoint(cfg.checkpoint)
        self.store = make_store(cfg.checkpoint, self.checkpoint_dir)
        cfg, validated, entries, self.plans = self._resolve(cfg, validated, entries, require_prompt)
        check_before_loading(cfg, validated.plan, entries, self.store, requests_of(cfg), planned=True)
        self.cfg = cfg  # the config the chain is built from; read-only from here on
        self.settings = validated.settings
        self.optimizations = list(validated.optimizations.values())
        self.run_info = self._run_info(cfg)

        self.stages: list[Stage] = []
        for entry in entries:
            device, dtype = stage_placement(cfg, entry.name)
            stage = entry.cls(entry.name, device, dtype, self.store, entry.settings)
            load = [d for d in (opt.load_device(stage) for opt in self.optimizations) if d is not None]
            stage.load_device = torch.device(load[0]) if load else None
            self.stages.append(stage)
        quiet_model_libraries()
        bar = progress_bar(self.stages, enabled=self.settings.progress, desc="loading", unit="stage")
        for stage in bar:
            bar.set_postfix_str(stage.name)
            stage.setup()
        for opt in self.optimizations:
            opt.setup(self.stages)
        self.load_time_s = time.perf_counter() - t0
        placement = ", ".join(f"{s.name}@{s.device}/{dtype_name(s.dtype)}" for s in self.stages)
        log.info("loaded %s in %.2f s (%s)", self.checkpoint_dir, self.load_time_s, placement)

    def _resolve(self, cfg, validated, entries, require_prompt):
        """Step 3: each optimisation may replace the config (a new value), which is then validated again."""
        plans: dict[str, Any] = {}
        for opt in list(validated.optimizations.values()):
            preview = ChainPreview(
                store=self.store,
                entries=entries,
                placements={e.name: stage_placement(cfg, e.name) for e in entries},
                plan=validated.plan,
                num_prompts=_num_prompts(cfg),
            )
            resolved, record = validated.optimizations[opt.key].resolve(cfg, preview)
            if record is not None:
                plans[opt.key] = record
            if resolved is not cfg:
                cfg = resolved
                validated = validate_config(cfg, require_prompt=require_prompt)
                entries = check_chain(cfg, validated.optimizations)
        return cfg, validated, entries, plans

    def optimization(self, key: str) -> Optimization | None:
        """The optimisation at config key ``key`` (``"offload"``, ``"compile"``, ...), if the config has it."""
        return next((opt for opt in self.optimizations if opt.key == key), None)

    @property
    def memory_plan(self) -> dict[str, Any] | None:
        """What ``memory.budget_gb`` chose (None without a budget)."""
        return self.plans.get("memory")

    @staticmethod
    def _run_info(cfg: DictConfig) -> RunInfo:
        config_yaml = resolved_config_yaml(cfg)
        return RunInfo(
            checkpoint=check_node(cfg.checkpoint, CheckpointConfig, "checkpoint").label,
            precision=str(cfg.precision.name),
            scheduler=str(cfg.scheduler.name),
            config_sha256=text_hash(config_yaml),
            config_yaml=config_yaml,
        )

    # ------------------------------------------------------------------------------------------------ building

    @classmethod
    def from_config(cls, overrides: Sequence[str] = (), /, *, write: bool = True, **keys: Any) -> Generator:
        """Build from the app's configs, as the command line does: override strings and/or keyword settings.

        ``Generator.from_config(checkpoint="tiny", precision="bf16", stages={"vocoder": {"device": "cpu"}})``.
        Bad settings raise the command line's ``ConfigError``. No prompt is needed here: give it per call.
        ``write=False`` leaves the writer out of the chain: nothing is written and ``output.dir`` is not needed.
        """
        argv = [*overrides, *overrides_from_keys(keys, config_groups())]
        line, cfg = compose_command_line(argv)
        if cfg is None:
            raise ConfigError("", f"{' '.join(argv)!r} asks for information, not a Generator")
        if not write:
            chain = [name for name in cfg.pipeline.chain if name != "writer"]
            cfg = OmegaConf.merge(cfg, {"pipeline": {"chain": chain}})
        elif cfg.output.get("dir") is None:
            cfg = OmegaConf.merge(cfg, {"output": {"dir": time.strftime("outputs/%Y-%m-%d/%H-%M-%S")}})
        return cls(cfg, require_prompt=False)

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every stage's modules and the accelerator memory they held."""
        for opt in self.optimizations:
            opt.teardown()
        for stage in self.stages:
            stage.teardown()
        self.store = None  # type: ignore[assignment]
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------------------------------------ calling

    def new_state(self, **request: Any) -> GenerationState:
        """The state of one call: the config's request keys, with ``request`` (validated as the config is)."""
        cfg = OmegaConf.merge(self.cfg, request) if request else self.cfg
        if request:
            validate_config(cfg)
        prompts = prompt_list(cfg.prompt) if cfg.get("prompt") is not None else None
        if prompts is None:
            raise ConfigError("prompt", 'required, e.g. prompt="rain on a tin roof" (or prompts_file=prompts.txt)')
        shard = cfg.get("shard") or {}
        return GenerationState(
            prompts=prompts,
            negative_prompts=negative_prompt_list(cfg.get("negative_prompt"), len(prompts)),
            num_waveforms=int(cfg.num_waveforms),
            seed=int(cfg.seed),
            guidance_scale=float(cfg.guidance_scale),
            steps=num_steps(cfg),
            eta=float(cfg.eta),
            audio_length_s=None if cfg.audio_length_s is None else float(cfg.audio_length_s),
            max_new_tokens=cfg.get("max_new_tokens"),
            generator=torch.Generator("cpu").manual_seed(int(cfg.seed)),
            trim=bool(cfg.output.trim),
            run=self.run_info,
            output_dir=None if cfg.output.get("dir") is None else Path(str(cfg.output.dir)).expanduser(),
            manifest=manifest_name(int(shard.get("index", 0)), int(shard.get("count", 1))),
        )

    def __call__(self, **request: Any) -> GenerationResult:
        """Run the chain once. Keyword arguments are request keys (``prompt``, ``negative_prompt``, ``seed``,
        ``steps``, ``guidance_scale``, ``audio_length_s``, ``num_waveforms``, ...) and the stock pipeline's
        ``latents``, ``prompt_embeds``, ``attention_mask``, ``generated_prompt_embeds`` and their ``negative_``
        forms, ``callback_on_step_end`` and ``output_type`` (``"np"``, ``"pt"`` or ``"latent"``)."""
        extra = {k: request.pop(k) for k in CALL_KEYS if k in request}
        output_type = extra.pop("output_type", "np")
        if output_type not in OUTPUT_TYPES:
            raise ConfigError("output_type", f"must be one of {', '.join(OUTPUT_TYPES)} (got {output_type!r})")
        skip: set[str] = set()
        if extra.get("prompt_embeds") is not None or extra.get("generated_prompt_embeds") is not None:
            state = self._state_from_embeddings(request, extra)
            skip |= {"text_encoders", "prior"}
            if state.num_waveforms > 1:
                skip.add("ranker")  # candidates are ranked by their prompt's text, which embeddings do not give
        else:
            state = self.new_state(**request)
        state.initial_latents = extra.get("latents")
        state.callback = extra.get("callback_on_step_end")
        stop_after = "denoiser" if output_type == "latent" else None
        return self.run(state, skip=skip, stop_after=stop_after, output_type=output_type)

    def generate(self, **request: Any) -> GenerationResult:
        """``gen(**request)``, under the name earlier versions used."""
        return self(**request)

    def run(
        self,
        state: GenerationState,
        skip: set[str] | frozenset[str] = frozenset(),
        stop_after: str | None = None,
        output_type: str = "np",
    ) -> GenerationResult:
        """Run the chain on a prepared state (``new_state``, possibly with per-item fields set)."""
        return self._result(self.run_stages(state, skip, stop_after), output_type)

    def run_stages(
        self, state: GenerationState, skip: set[str] | frozenset[str] = frozenset(), stop_after: str | None = None
    ) -> GenerationState:
        """``run`` without making a result: the state after the stages, for a caller that goes on with it (the
        server runs the text side and the denoiser for several requests at once, then the rest per request)."""
        for stage in self.stages:
            if stage.name in skip:
                continue
            t0 = time.perf_counter()
            for opt in self.optimizations:
                opt.before(stage)
            before = tensor_fields(state)
            try:
                with contextlib.ExitStack() as around:
                    for opt in self.optimizations:
                        around.enter_context(opt.context(stage))
                    state = stage(state)
            except (torch.OutOfMemoryError, MemoryError, RuntimeError) as exc:
                if not is_out_of_memory(exc):
                    raise
                raise describe_oom(exc, stage.name, stage.device, self.cfg) from None
            for item in check_stage_output(state, stage.name, before):
                log.error("%s", describe(state, item))
            synchronize(stage.device)
            for opt in reversed(self.optimizations):
                opt.after(stage)
            state.timings[stage.name] = time.perf_counter() - t0
            if stage.name == stop_after:
                break
        return state

    def _result(self, state: GenerationState, output_type: str) -> GenerationResult:
        def out(tensor: torch.Tensor | None) -> Any:
            if tensor is None or output_type == "pt":
                return tensor
            return tensor.numpy()

        latent = output_type == "latent"
        return GenerationResult(
            waveforms=None if latent else out(state.waveforms),
            sample_rate=None if latent or state.sample_rate is None else int(state.sample_rate),
            prompts=state.prompts,
            num_waveforms=state.num_waveforms,
            scores=out(state.scores),
            ranks=out(state.ranks),
            records=state.records,
            failed=[describe(state, i) for i in sorted(state.failed)],
            timings=dict(state.timings),
            metadata=self._metadata(state),
            latents=state.latents if latent else None,
        )

    def _state_from_embeddings(self, request: dict[str, Any], extra: dict[str, Any]) -> GenerationState:
        """A state whose text side is given, as the stock pipeline's ``prompt_embeds`` and friends give it."""
        if request.get("prompt") is not None:
            raise ConfigError("prompt_embeds", "give either prompt or prompt_embeds, not both")
        embeds, generated = extra.get("prompt_embeds"), extra.get("generated_prompt_embeds")
        if embeds is None or generated is None:
            raise ConfigError("prompt_embeds", "needs generated_prompt_embeds too (and the other way round)")
        batch = embeds.shape[0]
        mask = extra.get("attention_mask")
        mask = torch.ones(embeds.shape[:2], dtype=torch.long) if mask is None else mask
        state = self.new_state(**{**request, "prompt": ["embeddings"] * batch})  # validates the other keys
        state.prompts = [""] * batch
        if state.do_classifier_free_guidance:
            neg = extra.get("negative_prompt_embeds")
            neg_generated = extra.get("negative_generated_prompt_embeds")
            if (neg is None) != (neg_generated is None):
                raise ConfigError(
                    "negative_prompt_embeds", "needs negative_generated_prompt_embeds too (and the other way round)"
                )
            if neg is None:  # the negatives' text side runs, with T5 padded to the given embeddings' length
                sub = replace(
                    state,
                    prompts=state.negative_prompts or [""] * batch,
                    negative_prompts=None,
                    guidance_scale=1.0,
                    t5_length=int(embeds.shape[1]),
                    timings={},
                )
                for stage in self.stages:
                    if stage.name in ("text_encoders", "prior"):
                        sub = stage(sub)
                neg, neg_mask, neg_generated = sub.t5_embeds, sub.t5_mask, sub.generated_embeds
            else:
                neg_mask = extra.get("negative_attention_mask")
                neg_mask = torch.ones(neg.shape[:2], dtype=torch.long) if neg_mask is None else neg_mask
            embeds = torch.cat([neg.to(embeds), embeds])
            mask = torch.cat([neg_mask.to(mask), mask])
            generated = torch.cat([neg_generated.to(generated), generated])
        state.t5_embeds, state.t5_mask, state.generated_embeds = embeds, mask, generated
        return state

    def _metadata(self, state: GenerationState) -> dict[str, Any]:
        return {
            "prompts": list(state.prompts),
            "negative_prompts": state.negative_prompts,
            "seed": state.seed,
            "num_waveforms": state.num_waveforms,
            "steps": state.steps,
            "scheduler": self.run_info.scheduler,
            "guidance_scale": state.guidance_scale,
            "eta": state.eta,
            "audio_length_s": None if state.sample_rate is None else state.waveform_length / state.sample_rate,
            "num_samples": None if state.waveforms is None else int(state.waveforms.shape[1]),
            "checkpoint": self.run_info.checkpoint,
            "precision": self.run_info.precision,
            "stages": {s.name: f"{s.device}/{dtype_name(s.dtype)}" for s in self.stages},
        }


@dataclass(frozen=True)
class Request:
    """The shape of one kind of call, as the checks before loading see it.

    ``prompts`` are its prompts (or those of every call of this kind), None when they come with each call;
    ``num_prompts`` is how many one call holds. ``blame`` says which setting a refusal names.
    """

    prompts: tuple[str, ...] | None
    num_prompts: int
    audio_length_s: float | None
    num_waveforms: int
    blame: Blame = Blame()


def requests_of(cfg: DictConfig) -> list[Request]:
    """The call a config describes: its prompts, or one prompt given per call; none for prompts files (the batch
    runner describes their items)."""
    length, waveforms = cfg.get("audio_length_s"), int(cfg.num_waveforms)
    if cfg.get("prompt") is not None:
        prompts = tuple(prompt_list(cfg.prompt))
        return [Request(prompts, len(prompts), length, waveforms)]
    if cfg.get("prompts_file") is not None:
        return []
    return [Request(None, 1, length, waveforms)]


def check_requests(cfg: DictConfig, requests: Sequence[Request]) -> None:
    """:func:`check_before_loading` for a config as it is given (the command line, a batch run before its Generator):
    validated, its chain checked and its checkpoint resolved here; with ``memory.budget_gb`` the memory check waits
    for the plan (the Generator makes it)."""
    validated = validate_config(cfg, require_prompt=False)
    entries = check_chain(cfg, validated.optimizations)
    store = make_store(cfg.checkpoint, resolve_checkpoint(cfg.checkpoint))
    check_before_loading(cfg, validated.plan, entries, store, requests, planned=False)


#: Checks already passed in this process (the command line checks before Hydra starts, the Generator again).
_CHECKED: set[tuple] = set()


def check_before_loading(
    cfg: DictConfig,
    plan: Plan,
    entries: Sequence[ChainEntry],
    store: ComponentStore,
    requests: Sequence[Request],
    planned: bool,
) -> None:
    """Refuse, before any weights load, what only the checkpoint and the device can bound (ConfigError naming the
    setting, CheckpointError naming the file):

    - each weight component's config, built on ``meta`` by its class and compared with its weights' shapes;
    - the scheduler's settings and step count, judged by the scheduler itself;
    - ``max_new_tokens`` against GPT-2's positions, with the prompts' T5 token counts;
    - each request's audio length against the checkpoint's shortest;
    - each request's estimated peak memory against all its device has (with ``memory.budget_gb``, once the plan is
      made: ``planned``).
    """
    key = (text_hash(resolved_config_yaml(cfg)), tuple(requests), planned)
    if key in _CHECKED:
        return
    by_name = {entry.name: entry for entry in entries}
    if not str(cfg.checkpoint.get("name") or "").startswith(SYNTHETIC_PREFIX):  # packaged configs, no files
        check_component_configs(store, [c for entry in entries for c in entry.cls.components])
    if "denoiser" in by_name:
        where = str(store.path / "scheduler" / "scheduler_config.json")
        check_scheduler(
            by_name["denoiser"].settings.scheduler, store.config("scheduler"), num_steps(cfg), cfg.eta, where
        )
    if "prior" in by_name:
        _check_positions(cfg, store, requests)
    if "denoiser" in by_name:
        bucket = by_name["denoiser"].settings.length_bucket_s
        budget = (cfg.get("memory") or {}).get("budget_gb")
        preview = ChainPreview(
            store=store,
            entries=list(entries),
            placements={e.name: stage_placement(cfg, e.name) for e in entries},
            plan=plan,
            num_prompts=1,
        )
        for request in requests:
            try:
                store_geometry(store, request.audio_length_s, bucket)
                if planned or budget is None:
                    geometry = lambda length: store_geometry(store, length, bucket)  # noqa: E731
                    check_fits(
                        cfg, preview, geometry, request.audio_length_s, request.num_prompts, request.num_waveforms,
                        request.blame,
                    )  # fmt: skip
            except ConfigError as exc:
                if exc.key == "audio_length_s" and request.blame.length_key != exc.key:
                    raise ConfigError(request.blame.length_key, f"{request.blame.where}{exc.problem}") from None
                raise
    _CHECKED.add(key)


def _check_positions(cfg: DictConfig, store: ComponentStore, requests: Sequence[Request]) -> None:
    language_model = store.config("language_model")
    new_tokens = cfg.get("max_new_tokens") or language_model.get("max_new_tokens") or 8
    tokenizer_config = store.path / "tokenizer_2" / "tokenizer_config.json"
    try:
        longest = int(json.loads(tokenizer_config.read_text()).get("model_max_length") or 0)
    except (OSError, ValueError):
        longest = 0
    limit = language_model.get("n_positions") or language_model.get("max_position_embeddings")
    if longest and limit and positions_needed(longest, int(new_tokens)) <= int(limit):
        return  # even the longest prompt fits: no need to count tokens
    prompts = sorted({p for r in requests if r.prompts for p in r.prompts})
    if not prompts:
        return  # prompts come with each call: the prior checks them then
    tokenizer = store.get("tokenizer_2")
    tokens = max(
        len(ids) for ids in tokenizer(prompts, truncation=True, max_length=tokenizer.model_max_length).input_ids
    )
    check_positions(language_model, tokens, int(new_tokens))


def quiet_model_libraries() -> None:
    """Turn off diffusers' and transformers' own bars and advisory logging: our bars show loading per stage."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\..*")
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.set_verbosity_error()


def _num_prompts(cfg: DictConfig) -> int:
    if cfg.get("prompt") is not None:
        return len(prompt_list(cfg.prompt))
    return int(cfg.get("batch_size") or 1)
