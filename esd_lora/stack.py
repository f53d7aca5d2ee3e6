"""Apply one or several adapters, with weights, to a loaded pipeline through diffusers' own adapter API.

Stacking is exact: each adapter is a separate peft adapter and ``set_adapters`` weights their outputs; no
SVD or re-merging approximation is involved.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch

from .adapter import Adapter, base_fingerprint, load_adapter
from .errors import AdapterBaseMismatchError, AdapterShapeMismatchError, ConfigError
from .hub import HUB_PREFIX, resolve_adapter_source

T = TypeVar("T")


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter and the weight it is applied with (``FILE[:WEIGHT]`` on the command line).

    ``source`` is a local file, or a Hub repo as ``hub:OWNER/NAME[@REVISION]`` (or a bare ``OWNER/NAME``), pulled
    when the stack is loaded; a local path that exists always wins.
    """

    source: str
    weight: float = 1.0


def parse_adapter_spec(text: str) -> AdapterSpec:
    """Parse ``FILE``, ``FILE:WEIGHT`` or ``hub:REPO[@REV][:WEIGHT]`` (an existing path with ':' is kept whole)."""
    text = str(text).strip()
    if not text:
        raise ConfigError("empty adapter: write --adapter FILE or --adapter FILE:WEIGHT")
    path, sep, weight = text.rpartition(":")
    if ":" not in text.removeprefix(HUB_PREFIX) or os.path.exists(text):
        return AdapterSpec(text)
    try:
        value = float(weight)
    except ValueError:
        raise ConfigError(f"adapter weight {weight!r} in {text!r} is not a number: write FILE:0.8") from None
    if not math.isfinite(value):
        raise ConfigError(f"adapter weight in {text!r} must be a finite number, e.g. FILE:0.8")
    return AdapterSpec(path, value)


def parse_adapter_specs(items: list[AdapterSpec | str]) -> list[AdapterSpec]:
    """``FILE[:WEIGHT]`` strings parsed; specs kept as they are."""
    return [parse_adapter_spec(s) if isinstance(s, str) else s for s in items]


def apply_adapters(pipe, specs: list[AdapterSpec | str], *, force: bool = False) -> list[Adapter]:
    """Load each adapter into ``pipe.unet`` under its own name and activate them all with their weights.

    Every file is read and checked against the base before the pipeline changes: an adapter whose tensors do
    not fit the UNet is refused; one trained on other base weights is refused unless ``force``.
    """
    specs = parse_adapter_specs(specs)
    adapters = load_stack(specs, force=force)
    fingerprint = base_fingerprint(pipe.unet) if adapters else None
    for adapter in adapters:
        check_compatible(adapter, pipe, fingerprint=fingerprint, force=force)
    names = []
    for i, (spec, adapter) in enumerate(zip(specs, adapters)):
        name = f"esd_{i}_" + re.sub(r"\W", "_", Path(spec.source).stem)
        metadata = {f"unet.{k}": v for k, v in adapter.lora_config.items()}
        pipe.unet.load_lora_adapter(adapter.state_dict, prefix="unet", adapter_name=name, metadata=metadata)
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[s.weight for s in specs])
    return adapters


def load_stack(specs: list[AdapterSpec], *, force: bool = False) -> list[Adapter]:
    """Read every adapter of a stack, pulling Hub ones; refuse one listed twice and (unless ``force``) mixed bases."""
    seen: dict[Path, str] = {}
    paths = [resolve_adapter_source(spec.source) for spec in specs]
    for spec, path in zip(specs, paths):
        key = path.resolve()
        if key in seen:
            raise ConfigError(f"adapter {spec.source} is listed twice (also as {seen[key]}): give it once, with "
                              "the summed weight, e.g. FILE:1.5")
        seen[key] = spec.source
    adapters = [load_adapter(path) for path in paths]
    if not force:
        first = adapters[0] if adapters else None
        for other in adapters[1:]:
            if other.metadata.base_fingerprint != first.metadata.base_fingerprint:
                raise AdapterBaseMismatchError(
                    f"the stack mixes bases: {_name(first)} was trained on {first.metadata.base_model} "
                    f"({first.metadata.base_fingerprint}), {_name(other)} on {other.metadata.base_model} "
                    f"({other.metadata.base_fingerprint}): stack adapters of one base, or pass --force")
    return adapters


def with_and_without(pipe, specs: list[AdapterSpec], run: Callable[[], T], *, force: bool = False,
                     base_run: Callable[[], T] | None = None) -> tuple[T, T, list[Adapter]]:
    """``run()`` on the base, then on base + ``specs`` (same call, so same prompts and seeds).

    Returns both results and the adapters; the adapters are unloaded afterwards, also after an error. Without
    adapters ``run`` is called once and its result returned twice. ``base_run``, if given, is called on the base
    instead of ``run``.
    """
    if not specs:
        result = run()
        return result, result, []
    adapters = apply_adapters(pipe, specs, force=force)  # every file checked before any work is done
    try:
        pipe.disable_lora()
        base = (base_run or run)()
        pipe.enable_lora()
        adapted = run()
    finally:
        pipe.unload_lora_weights()
    return base, adapted, adapters


def check_compatible(adapter: Adapter, pipe, *, fingerprint: str | None = None, force: bool = False) -> None:
    """Refuse an adapter whose shapes do not fit ``pipe.unet``, or (unless ``force``) whose base differs."""
    modules = dict(pipe.unet.named_modules())
    for key, tensor in adapter.state_dict.items():
        name, _, part = key.removeprefix("unet.").partition(".lora_")
        module = modules.get(name)
        module = getattr(module, "base_layer", module)
        if isinstance(module, torch.nn.Linear):
            fan_in, fan_out = module.in_features, module.out_features
        elif isinstance(module, torch.nn.Conv2d):
            fan_in, fan_out = module.in_channels, module.out_channels
        else:
            fan_in = fan_out = None
        fits = fan_in is not None and (tensor.shape[1] == fan_in if part.startswith("A.") else
                                       tensor.shape[0] == fan_out)
        if not fits:
            raise AdapterShapeMismatchError(
                f"{_name(adapter)} does not fit this base ({_base_id(pipe)}): its tensor {key} "
                f"{tuple(tensor.shape)} has no matching module; it was trained on {adapter.metadata.base_model} "
                f"({adapter.metadata.family}): use it with a base of that architecture")
    fingerprint = fingerprint or base_fingerprint(pipe.unet)
    if adapter.metadata.base_fingerprint != fingerprint and not force:
        raise AdapterBaseMismatchError(
            f"{_name(adapter)} was trained on {adapter.metadata.base_model} ({adapter.metadata.base_fingerprint}), "
            f"not on this base {_base_id(pipe)} ({fingerprint}): use an adapter trained on this base, or pass "
            "--force (force=True) to apply it anyway")


def _name(adapter: Adapter) -> str:
    return str(adapter.path) if adapter.path else "the adapter"


def _base_id(pipe) -> str:
    return str(getattr(pipe, "name_or_path", "") or "the loaded pipeline")
