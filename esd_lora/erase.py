"""Train an ESD erasure as a LoRA adapter on the UNet.

One UNet lives in memory. With the adapter switched on it is the model being trained; with the adapter
switched off it is the frozen teacher, bit for bit the base model. Each step:

1. draw a concept and a stopping step ``k`` of the DDIM schedule;
2. sample ``x_t`` from pure noise for ``k`` steps with classifier-free guidance (by the trained model, as in
   the paper, or by the frozen one);
3. ask the frozen model for ``e0`` (unconditional, or the ``erase_from`` prompt) and ``ep`` (the concept) in
   one batched forward, and the trained model for ``en`` (the concept);
4. step Adam on ``MSE(en, e0 - eta * (ep - e0))``, plus, with ``preserve`` prompts, ``preserve_weight`` times
   the MSE between the trained and the frozen prediction for one of them at the same ``x_t``.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from collections import deque
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator

import torch
from diffusers import DDIMScheduler
from diffusers.training_utils import cast_training_params
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from tqdm.auto import tqdm

from . import __version__
from .adapter import Adapter, AdapterMetadata, base_fingerprint, check_output
from .config import EraseConfig
from .errors import ConfigError, NonFiniteLossError
from .families import SHORT_NAMES, Conditioning, as_pipeline, family_of
from .objective import esd_loss, guided, preservation_loss

ADAPTER_NAME = "esd"
_LOSS_WINDOW = 50  # the reported final loss is the mean over this many last steps
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
    config = _make_config(concepts, config, options)
    if out is not None:
        out = check_output(out, overwrite=overwrite)  # fail before training, not after
    pipe = as_pipeline(base, device=config.device, dtype=config.dtype)
    base_id = _pipeline_id(pipe) if pipe is base else str(base)
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
        final_loss = _train(pipe, family, config, progress=progress, callback=callback)
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


def _train(pipe, family, config: EraseConfig, *, progress: bool, callback) -> float:
    unet = pipe.unet
    device, dtype = unet.device, unet.dtype
    generator = torch.Generator().manual_seed(config.seed)
    sampler = DDIMScheduler.from_config(pipe.scheduler.config)
    sampler.set_timesteps(config.ddim_steps, device=device)

    # Text is frozen: encode every prompt once: "", the concepts, the preserved prompts, then erase_from.
    n, m = len(config.concepts), len(config.preserve)
    texts = family.encode(["", *config.concepts, *config.preserve] + ([config.erase_from] if config.erase_from
                                                                       else []))
    uncond = texts[0]
    anchor = texts[1 + n + m] if config.erase_from else uncond
    concepts = [texts[1 + i] for i in range(n)]
    preserved = [texts[1 + n + j] for j in range(m)]

    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    recent: deque[float] = deque(maxlen=_LOSS_WINDOW)
    bar = tqdm(range(config.iterations), desc="erasing", unit="it", disable=not progress)
    for step in bar:
        i = int(torch.randint(n, (1,), generator=generator))
        k = int(torch.randint(config.ddim_steps, (1,), generator=generator))
        noise = torch.randn((1, *family.latent_shape), generator=generator)
        # The student sees the concept and, with a preservation term, one preserved prompt at the same x_t.
        student_texts = [concepts[i]] + ([preserved[int(torch.randint(m, (1,), generator=generator))]] if m else [])
        with torch.no_grad():
            with frozen(unet) if config.sample_with == "frozen" else nullcontext():
                x = _sample_until(unet, sampler, noise.to(device, dtype) * sampler.init_noise_sigma, k,
                                  [uncond, concepts[i]], config.start_guidance)
            t = sampler.timesteps[k]
            with frozen(unet):  # e0, ep (and the preserved prompt's prediction) in one batched forward
                teacher = _predict(unet, x, t, [anchor, *student_texts])
        student = _predict(unet, x, t, student_texts)
        loss = esd_loss(student[0], teacher[0], teacher[1], config.eta)
        if m:
            loss = loss + config.preserve_weight * preservation_loss(student[1], teacher[2])
        value = loss.item()
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss became {value} at iteration {step + 1}; nothing was written: lower "
                                     f"--lr (now {config.lr:g}) or use --dtype fp32")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        recent.append(value)
        bar.set_postfix(loss=f"{value:.4f}")
        if callback is not None:
            callback(step + 1, value)
    return sum(recent) / len(recent)


def _predict(unet, x: torch.Tensor, t, texts: list[Conditioning]) -> tuple[torch.Tensor, ...]:
    """The UNet's predictions at one ``x_t`` for several prompts, in one batched forward."""
    batch = Conditioning.cat(texts)
    return unet(x.expand(len(texts), *x.shape[1:]), t, **batch.unet_kwargs()).sample.chunk(len(texts))


def _sample_until(unet, sampler, x: torch.Tensor, k: int, texts: list[Conditioning], guidance: float) -> torch.Tensor:
    """Run the first ``k`` DDIM steps from noise ``x`` with classifier-free guidance (``texts``: uncond, cond)."""
    for t in sampler.timesteps[:k]:  # DDIM needs no input scaling
        uncond, cond = _predict(unet, x, t, texts)
        x = sampler.step(guided(uncond, cond, guidance), t, x).prev_sample
    return x


@contextmanager
def frozen(unet) -> Iterator[None]:
    """Switch the adapter off: inside, ``unet`` is exactly the base model."""
    unet.disable_adapters()
    try:
        yield
    finally:
        unet.enable_adapters()


def _make_config(concepts, config: EraseConfig | None, options: dict) -> EraseConfig:
    base = config.to_dict() if config is not None else {}
    unknown = set(options) - set(EraseConfig.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"unknown option(s) {', '.join(sorted(unknown))}: valid options are "
                          f"{', '.join(f for f in EraseConfig.__dataclass_fields__ if f != 'concepts')}")
    return EraseConfig(**{**base, **options, "concepts": concepts})


def _pipeline_id(pipe) -> str:
    """How the metadata names a loaded pipeline's base: its short name, Hub id or path."""
    name = str(getattr(pipe, "name_or_path", None) or pipe.config.get("_name_or_path", "") or "unknown")
    return {path: short for short, path in SHORT_NAMES.items()}.get(name, name)
