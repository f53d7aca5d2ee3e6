"""Train an ESD erasure as a LoRA adapter on the UNet.

One UNet lives in memory. With the adapter switched on it is the model being trained; with the adapter
switched off it is the frozen teacher, bit for bit the base model. Each step:

1. draw a concept (or, with ``contexts``, a concept inside one of them) and a stopping step ``k`` of the DDIM
   schedule;
2. take ``x_t`` after ``k`` steps of sampling from pure noise with classifier-free guidance (by the trained
   model, as in the paper, or by the frozen one): from a bank of whole trajectories re-sampled every
   ``refresh_every`` steps (default), or from a fresh trajectory every step (``bank_size=0``, the paper);
3. ask the frozen model for ``e0`` (unconditional, or the ``erase_from`` prompt, or the context without the
   concept) and ``ep`` (the drawn prompt) in one batched forward, and the trained model for ``en`` (the concept);
4. step Adam on ``MSE(en, e0 - eta * (ep - e0))``, plus, with ``preserve`` prompts, ``preserve_weight`` times
   the MSE between the trained and the frozen prediction for one of them at the same ``x_t`` (or, with
   ``preserve_at='own'``, at an ``x_t`` of that prompt's own trajectory, sampled by the frozen base); with
   ``preserve_text_weight``, plus that weight times how far the adapter moves the cross-attention keys and values
   of the preserved prompts and the empty prompt (:class:`KeyValueAnchor`; no UNet forward).
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import math
import os
import re
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

import torch
from diffusers import DDIMScheduler
from diffusers.optimization import get_scheduler
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.utils import get_peft_model_state_dict
from tqdm.auto import tqdm

from . import __version__
from .adapter import Adapter, AdapterMetadata, base_fingerprint
from .outputs import check_output
from .config import EraseConfig
from .errors import ConfigError, NonFiniteLossError
from .families import SHORT_NAMES, Conditioning, as_pipeline, family_of, recommended_options
from .objective import esd_loss, guided, preservation_loss

ADAPTER_NAME = "esd"
_LOSS_WINDOW = 50  # the reported final loss is the mean over this many last steps
# Latent elements of the trajectories sampled in one forward when refreshing the bank (refresh_batch=0): eight
# SD 1.5 latents (4x64x64). The whole bank of a small model fits; SD 1.5 and SDXL sample in chunks, which bounds
# the refresh's activation memory (at SD 1.5 size in bf16, a bank of 16 in one forward peaked 2.1 GiB above the
# pipeline's weights, and gradient checkpointing did not lower that peak).
_REFRESH_BUDGET = 8 * 4 * 64 * 64
_XATTN_PROJECTIONS = {"esd-x": ("to_q", "to_k", "to_v", "to_out.0"), "esd-x-strict": ("to_k", "to_v")}
_ESD_U_EXCLUDED = ("time_embedding.", "add_embedding.", "conv_out")


def target_modules(unet: torch.nn.Module, method: str) -> list[str]:
    """Names of the UNet's Linear/Conv2d modules an erasure ``method`` puts LoRA layers on."""
    names = []
    for name, module in unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) or ".lora_" in name:
            continue
        name = name.removesuffix(".base_layer")  # a module already wrapped by peft
        in_cross_attention = "attn2" in name.split(".")
        if method in _XATTN_PROJECTIONS:
            keep = in_cross_attention and name.split(".attn2.")[-1] in _XATTN_PROJECTIONS[method]
        elif method == "esd-u":
            keep = not in_cross_attention and not name.startswith(_ESD_U_EXCLUDED)
        else:  # esd-all
            keep = True
        if keep:
            names.append(name)
    return sorted(names)


def lora_config(unet: torch.nn.Module, config: EraseConfig) -> dict:
    """The LoRA config stored in the file header, in the form diffusers passes to ``LoraConfig``."""
    return {"r": config.rank, "lora_alpha": config.alpha, "target_modules": target_modules(unet, config.method),
            "rank_pattern": {}, "alpha_pattern": {}, "use_dora": False, "lora_bias": False}


def erase(base, concepts: str | list[str], *, config: EraseConfig | None = None,
          out: str | os.PathLike | None = None, overwrite: bool = False, progress: bool = True,
          callback: Callable[[int, float], None] | None = None, **options) -> Adapter:
    """Erase ``concepts`` from ``base`` by training an ESD LoRA adapter; return it (and save it to ``out``).

    ``base`` is a diffusers folder, a Hub id, or a loaded StableDiffusion(XL)Pipeline (left unchanged).
    ``options`` are :class:`EraseConfig` fields (``method``, ``iterations``, ``eta``, ...) and override
    ``config``. ``callback(step, loss)`` is called after every step; raising in it stops training.

    >>> adapter = erase("path/to/sd15", "van gogh", iterations=200, out="no-van-gogh.safetensors")
    """
    config = make_config(base, concepts, config, **options)
    if out is not None:
        out = check_output(out, overwrite=overwrite)  # fail before training, not after
    pipe = as_pipeline(base, device=config.device, dtype=config.dtype)
    owned = pipe is not base  # loaded here: what training does not need is freed once the text is encoded
    base_id = str(base) if owned else _pipeline_id(pipe)
    family = family_of(pipe)
    unet = pipe.unet
    if getattr(unet, "_hf_peft_config_loaded", False) and unet.peft_config:
        raise ConfigError("the pipeline already has LoRA adapters loaded: call pipe.unload_lora_weights() "
                          "before erasing, so the teacher is the base model")
    fingerprint = base_fingerprint(unet)
    lora = lora_config(unet, config)
    unet.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):  # seeded LoRA init without touching the caller's RNG
        torch.manual_seed(config.seed)
        unet.add_adapter(LoraConfig(**lora), adapter_name=ADAPTER_NAME)
    # The adapter trains in fp32 whatever the base dtype: Adam's state and eps underflow in fp16.
    cast_training_params(unet, dtype=torch.float32)
    try:
        started = time.perf_counter()
        with _speedups(unet, config):
            final_loss = _train(pipe, family, config, progress=progress, callback=callback,
                                release=owned)
        wall_time = time.perf_counter() - started
        state_dict = {f"unet.{k}": v.detach().to("cpu", torch.float32).clone()
                      for k, v in get_peft_model_state_dict(unet, adapter_name=ADAPTER_NAME).items()}
    finally:
        unet.unload_lora()  # the pipeline is back to its plain base modules, also after an error
    metadata = AdapterMetadata(
        config=config, base_model=base_id, base_fingerprint=fingerprint, family=family.label,
        prediction_type=family.prediction_type, esd_lora_version=__version__, wall_time_s=round(wall_time, 3),
        final_loss=final_loss, created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    adapter = Adapter(state_dict=state_dict, lora_config=lora, metadata=metadata)
    if out is not None:
        adapter.save(out, overwrite=overwrite)
    return adapter


def _train(pipe, family, config: EraseConfig, *, progress: bool, callback, release: bool = False) -> float:
    unet = pipe.unet
    device = unet.device
    generator = torch.Generator().manual_seed(config.seed)
    sampler = DDIMScheduler.from_config(pipe.scheduler.config)
    sampler.set_timesteps(config.ddim_steps, device=device)

    # Text is frozen: encode every prompt once: "", the erased prompts (the concepts, then the concepts in their
    # contexts), the preserved prompts, then the prompts they are erased toward (erase_from, the contexts alone).
    targets = config.targets()
    toward = list(dict.fromkeys(a for _, a in targets if a is not None))
    n, m = len(targets), len(config.preserve)
    texts = family.encode(["", *(prompt for prompt, _ in targets), *config.preserve, *toward])
    uncond = texts[0]
    e0_of = [uncond if a is None else texts[1 + n + m + toward.index(a)] for _, a in targets]
    if release and not config.adversarial_every:  # adversarial prompts are encoded while training
        _release_unused(pipe)
    concepts = [texts[1 + i] for i in range(n)]
    preserved = [texts[1 + n + j] for j in range(m)]
    source_class = TrajectoryBank if config.bank_size else Resampler
    source = source_class(unet, sampler, family, uncond, concepts, config, generator)
    own = None  # preserve_at='own': x_t of the preserved prompts' trajectories, sampled by the frozen base
    if m and config.preserve_at == "own":
        own_config = dataclasses.replace(config, sample_with="frozen")
        own = TrajectoryBank(unet, sampler, family, uncond, preserved, own_config, generator, keeps_teacher=True) \
            if config.bank_size else Resampler(unet, sampler, family, uncond, preserved, own_config, generator)
    anchor = KeyValueAnchor(unet, [uncond, *preserved]) if config.preserve_text_weight else None
    if config.adversarial_every:
        from .attack import Adversary  # attack.py imports this module

        adversary = Adversary(pipe, config)

    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    schedule = get_scheduler(config.lr_schedule, optimizer, num_warmup_steps=0, num_training_steps=config.iterations)
    recent: deque[float] = deque(maxlen=_LOSS_WINDOW)
    bar = tqdm(range(config.iterations), desc="erasing", unit="it", disable=not progress)
    for step in bar:
        x, t, i, cached = source.draw(step)
        # The student sees the concept and, with a preservation term, one preserved prompt: at the same x_t, or
        # (preserve_at='own') at an x_t of that prompt's own trajectory, in a forward of its own.
        if own is not None:
            own_x, own_t, j, own_cached = own.draw(step)
        student_texts = [concepts[i]] + ([preserved[int(torch.randint(m, (1,), generator=generator))]]
                                         if m and own is None else [])
        with torch.no_grad(), frozen(unet):  # e0, ep (and the preserved prompt's prediction) in one forward
            if cached is None:
                e0, ep, *kept = _predict(unet, x, t, [e0_of[i], *student_texts])
            else:  # the bank already holds the frozen model's e0 and ep at this x_t
                (e0, ep), kept = cached, list(_predict(unet, x, t, student_texts[1:])) if len(student_texts) > 1 \
                    else []
            if own is not None:  # the frozen sampler's guidance pass is the preserved prompt's frozen prediction
                kept = [own_cached[1] if own_cached else _predict(unet, own_x, own_t, [preserved[j]])[0]]
        student = _predict(unet, x, t, student_texts)
        if own is not None:
            student += _predict(unet, own_x, own_t, [preserved[j]])
        loss = esd_loss(student[0], e0, ep, config.eta)
        if config.adversarial_every:  # the erasure must also hold for the concept + an adversarial soft prompt
            loss = loss + adversary.esd_term(step, x, t, i, e0, ep)
        if m:
            loss = loss + config.preserve_weight * preservation_loss(student[1], kept[0])
        if anchor is not None:
            loss = loss + config.preserve_text_weight * anchor.penalty()
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss became {value} at iteration {step + 1}; nothing was written: lower "
                                     f"--lr (now {config.lr:g}) or use --dtype fp32")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        recent.append(value)
        bar.set_postfix(loss=f"{value:.4f}")
        if callback is not None:
            callback(step + 1, value)
    return sum(recent) / len(recent)


def _release_unused(pipe) -> None:
    """Free the text encoders and the VAE of a pipeline that erase() loaded itself, once every prompt is encoded:
    training needs only the UNet (SDXL's two text encoders are 1.6 GB in bf16)."""
    for name in ("text_encoder", "text_encoder_2", "vae"):
        if getattr(pipe, name, None) is not None:
            setattr(pipe, name, None)
    gc.collect()
    if pipe.unet.device.type == "cuda":
        torch.cuda.empty_cache()


class KeyValueAnchor:
    """How far the adapter moves the cross-attention keys and values of some prompts: for every attn2 to_k / to_v
    LoRA layer, ``|dW h|^2 / |W h|^2`` summed over the prompts' text embeddings ``h`` (every position, each scaled
    to unit length so that no token, such as CLIP's start token, outweighs the others), averaged over the layers.
    ``dW`` is the layer's LoRA delta (``B A * scale``) and ``W`` the base weight. With the embeddings'
    second-moment matrix ``C`` computed once, ``|dW h|^2`` summed is ``scale^2 tr((A C A^T)(B^T B))``: a step
    costs a rank x width x width product per layer, no UNet forward."""

    def __init__(self, unet, texts: list[Conditioning]) -> None:
        hidden = torch.cat([t.hidden.reshape(-1, t.hidden.shape[-1]) for t in texts]).float()
        hidden = torch.nn.functional.normalize(hidden, dim=-1)
        self.moment = hidden.T @ hidden / len(hidden)
        self.layers = []
        modules = dict(unet.named_modules())
        for name in target_modules(unet, "esd-x-strict"):  # every attn2 to_k / to_v, as the adapter wraps them
            module = modules[name]
            if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
                weight = module.get_base_layer().weight.detach().float()
                self.layers.append((module, float(((weight @ self.moment) * weight).sum())))

    def penalty(self) -> torch.Tensor:
        total = 0.0
        for module, energy in self.layers:
            a = module.lora_A[ADAPTER_NAME].weight.float()  # (rank, in)
            b = module.lora_B[ADAPTER_NAME].weight.float()  # (out, rank)
            moved = ((a @ self.moment @ a.T) * (b.T @ b)).sum() * module.scaling[ADAPTER_NAME] ** 2
            total = total + moved / energy
        return total / max(len(self.layers), 1)


class Resampler:
    """x_t as in the paper: for every step, draw a concept and a stopping step and sample a fresh trajectory."""

    def __init__(self, unet, sampler, family, uncond: Conditioning, concepts: list[Conditioning],
                 config: EraseConfig, generator: torch.Generator) -> None:
        self.unet, self.sampler, self.family, self.config, self.generator = unet, sampler, family, config, generator
        self.uncond, self.concepts = uncond, concepts

    def draw(self, step: int):
        """``(x_t, t, concept index, None)``: no cached teacher predictions."""
        i = int(torch.randint(len(self.concepts), (1,), generator=self.generator))
        k = int(torch.randint(self.config.ddim_steps, (1,), generator=self.generator))
        noise = torch.randn((1, *self.family.latent_shape), generator=self.generator)
        x = noise.to(self.unet.device, self.unet.dtype) * self.sampler.init_noise_sigma
        with torch.no_grad(), _sampling_model(self.unet, self.config):
            for t in self.sampler.timesteps[:k]:  # DDIM needs no input scaling
                u, c = _predict(self.unet, x, t, [self.uncond, self.concepts[i]])
                x = self.sampler.step(guided(u, c, self.config.start_guidance), t, x).prev_sample
        return x, self.sampler.timesteps[k], i, None


class TrajectoryBank(Resampler):
    """x_t from a bank of ``bank_size`` whole trajectories, sampled together and re-sampled every
    ``refresh_every`` steps; each step draws one trajectory and one stopping step from the bank.

    Sampled by the frozen model without ``erase_from`` or contexts, the guidance passes along a trajectory already
    are the teacher's ``e0`` (unconditional) and ``ep`` (the concept) at every ``x_t``: they are kept and reused.
    ``keeps_teacher=True`` keeps them whatever the config says (the bank of preserved prompts, ``preserve_at='own'``,
    whose conditional pass is the frozen prediction the preservation term needs).
    """

    def __init__(self, *args, keeps_teacher: bool | None = None) -> None:
        super().__init__(*args)
        if keeps_teacher is None:  # sampled by the frozen model, and every e0 is the unconditional one
            keeps_teacher = self.config.sample_with == "frozen" and all(a is None for _, a in self.config.targets())
        self.keeps_teacher = keeps_teacher
        self.xs: list[torch.Tensor] = []
        self.predictions: list[tuple[torch.Tensor, torch.Tensor]] = []

    def refresh(self) -> None:
        size, generator = self.config.bank_size, self.generator
        self.concept_of = torch.randint(len(self.concepts), (size,), generator=generator).tolist()
        noise = torch.randn((size, *self.family.latent_shape), generator=generator)
        chunk = self.config.refresh_batch or max(1, _REFRESH_BUDGET // noise[0].numel())
        steps = [self._sample(noise[i : i + chunk], self.concept_of[i : i + chunk]) for i in range(0, size, chunk)]
        per_step = list(zip(*steps))  # [chunk][step] -> [step][chunk]
        self.xs = [torch.cat([x for x, _ in chunks]) for chunks in per_step]
        self.predictions = [tuple(torch.cat(p) for p in zip(*(pred for _, pred in chunks))) for chunks in per_step] \
            if self.keeps_teacher else []

    def _sample(self, noise: torch.Tensor, concept_of: list[int]) -> list[tuple[torch.Tensor, tuple | None]]:
        """Sample whole trajectories from ``noise``, one batched forward per step: each step's ``(x_t, (u, c))``
        (the guidance pass is kept only when it is the teacher's)."""
        texts = Conditioning.cat([self.uncond] * len(concept_of) + [self.concepts[i] for i in concept_of])
        x = noise.to(self.unet.device, self.unet.dtype) * self.sampler.init_noise_sigma
        steps = []
        with torch.no_grad(), _sampling_model(self.unet, self.config):
            for t in self.sampler.timesteps:
                u, c = self.unet(torch.cat([x, x]), t, **texts.unet_kwargs()).sample.chunk(2)
                steps.append((x, (u, c) if self.keeps_teacher else None))
                x = self.sampler.step(guided(u, c, self.config.start_guidance), t, x).prev_sample
        return steps

    def draw(self, step: int):
        """``(x_t, t, concept index, (e0, ep) or None)``."""
        if step % self.config.refresh_every == 0:
            self.refresh()
        b = int(torch.randint(self.config.bank_size, (1,), generator=self.generator))
        k = int(torch.randint(self.config.ddim_steps, (1,), generator=self.generator))
        cached = tuple(p[b : b + 1] for p in self.predictions[k]) if self.keeps_teacher else None
        return self.xs[k][b : b + 1], self.sampler.timesteps[k], self.concept_of[b], cached


@contextmanager
def _speedups(unet, config: EraseConfig) -> Iterator[None]:
    """Gradient checkpointing and a compiled UNet forward while training, as ``config`` asks; undone after.

    Only the forward is compiled (the module and its peft layers stay as they are), so switching the adapter off
    still gives the base model: torch.compile guards on the switch and keeps one graph per state.
    """
    checkpointing = config.gradient_checkpointing and not unet.is_gradient_checkpointing
    if checkpointing:
        unet.enable_gradient_checkpointing()
    own_forward = vars(unet).get("forward")  # e.g. an accelerate hook's wrapper, to put back
    if config.compile:
        unet.forward = torch.compile(unet.forward)
    try:
        yield
    finally:
        if config.compile:
            if own_forward is None:
                del unet.forward  # back to the class's forward
            else:
                unet.forward = own_forward
        if checkpointing:
            unet.disable_gradient_checkpointing()


def _sampling_model(unet, config: EraseConfig):
    """The model that samples x_t: the frozen base, or base + adapter being trained."""
    return frozen(unet) if config.sample_with == "frozen" else nullcontext()


def _predict(unet, x: torch.Tensor, t, texts: list[Conditioning]) -> tuple[torch.Tensor, ...]:
    """The UNet's predictions at one ``x_t`` for several prompts, in one batched forward."""
    batch = Conditioning.cat(texts)
    return unet(x.expand(len(texts), *x.shape[1:]), t, **batch.unet_kwargs()).sample.chunk(len(texts))


@contextmanager
def frozen(unet) -> Iterator[None]:
    """Switch the adapter off: inside, ``unet`` is exactly the base model."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def make_config(base, concepts, config: EraseConfig | None = None, **options) -> EraseConfig:
    """The validated config of an erasure: ``options`` over ``config``, or over the base's recommended settings
    (see :func:`~esd_lora.families.recommended_options`) and the library defaults when no ``config`` is given."""
    unknown = set(options) - set(EraseConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))}: valid options are "
                          f"{', '.join(f for f in EraseConfig.__dataclass_fields__ if f != 'concepts')}")
    start = config.to_dict() if config is not None else recommended_start(base, concepts, options)[0]
    return EraseConfig(**{**start, **options, "concepts": concepts})


CONTEXT_OPTIONS = frozenset({"contexts", "concept_contexts"})
"""The options that set contexts: either one, given or recommended, turns the base's scenes off."""


def recommended_start(base, concepts, options: dict) -> tuple[dict, Path | None, list[str] | None]:
    """What the base's recommendations give an erasure of ``concepts`` before ``options`` apply, the file they come
    from, and the names of the ``by_concept`` group whose settings were added (None when none applies): its
    options, with those of the group that names every erased concept on top, ``anchors`` made the preserved prompts
    and ``scenes`` the contexts (shared, or each concept's own: :func:`recommended_contexts`; unless ``options`` or
    the group set contexts), less any recommendation an explicit option makes invalid (the file suits the base's
    defaults)."""
    start, path = recommended_options(base)
    anchors, scenes = start.pop("anchors", []), start.pop("scenes", [])
    erased = [concepts] if isinstance(concepts, str) else list(concepts)
    group = concept_group(start.pop("by_concept", []), erased)
    start.update(group["erase"] if group else {})
    unknown = set(start) - set(EraseConfig.__dataclass_fields__) | {"concepts"} & set(start)
    if unknown:
        raise ConfigError(f"{path} recommends unknown option(s) {', '.join(sorted(unknown))}: fix the file")
    if anchors and "preserve" not in options and "preserve" not in start:
        start["preserve"] = default_anchors(anchors, erased)
    if scenes and not CONTEXT_OPTIONS & (set(options) | set(start)):
        start.update(recommended_contexts(scenes, erased))
    chosen = {**start, **options}
    if chosen.get("method") == "esd-u" and "preserve_text_weight" not in options:
        start.pop("preserve_text_weight", None)  # it holds cross-attention, which esd-u does not train
    if chosen.get("adversarial_every") and not CONTEXT_OPTIONS & set(options):
        for name in CONTEXT_OPTIONS:  # not combined with adversarial erasure yet
            start.pop(name, None)
    return start, path, group["concepts"] if group else None


def concept_group(groups: list[dict], concepts: list[str]) -> dict | None:
    """The first of a base's ``by_concept`` groups that names every erased concept (any case and spacing)."""
    def norm(name) -> str:
        return " ".join(str(name).lower().split())

    erased = {norm(c) for c in concepts}
    return next((g for g in groups if erased and erased <= {norm(c) for c in g["concepts"]}), None)


def default_anchors(anchors: list[str], concepts: list[str]) -> list[str]:
    """The base's anchor prompts, less those sharing a word with an erased concept (erasing "red" keeps "blue")."""
    erased = {w for c in concepts for w in str(c).lower().split()}
    return [a for a in anchors if not erased & set(a.lower().split())]


def scene_contexts(scenes: list[str], concepts: list[str]) -> dict[str, list[str]]:
    """The contexts a base's scenes give each erased concept: each scene that names the concept (as whole words,
    any case) and no other erased concept, with the concept replaced by the slot ("striped red circle" -> "striped
    {} circle" when red is erased). A scene naming two erased concepts is left out: erasing red toward "striped
    star" would teach star back while star is erased. Concepts named by no scene are left out."""
    def pattern(concept) -> re.Pattern | None:
        words = " ".join(str(concept).split())
        return re.compile(rf"(?<!\w){re.escape(words)}(?!\w)", re.IGNORECASE) if words else None

    patterns = {concept: pattern(concept) for concept in concepts}
    found = {}
    for concept, own in patterns.items():
        others = [p for c, p in patterns.items() if c != concept and p]
        contexts = list(dict.fromkeys(own.sub("{}", scene, count=1) for scene in scenes
                                      if own and own.search(scene) and not any(p.search(scene) for p in others)))
        if contexts:
            found[concept] = contexts
    return found


def recommended_contexts(scenes: list[str], concepts: list[str]) -> dict:
    """The option a base's scenes give an erasure of ``concepts``: ``contexts`` when every concept gets the same
    ones (one concept; red and blue), else ``concept_contexts``, each concept inside its own scenes (red and star,
    whose slots are a colour and a shape)."""
    found = scene_contexts(scenes, concepts)
    per_concept = [found.get(c, []) for c in concepts]
    if all(contexts == per_concept[0] for contexts in per_concept):  # also no concept: EraseConfig says so
        return {"contexts": per_concept[0] if per_concept else []}
    return {"concept_contexts": found}


def _pipeline_id(pipe) -> str:
    """How the metadata names a loaded pipeline's base: its short name, Hub id or path."""
    name = str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "") or "unknown")
    return {path: short for short, path in SHORT_NAMES.items()}.get(name, name)
