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

from .adapter import Adapter, load_adapter
from .errors import ConfigError


@dataclass(frozen=True)
class AdapterSpec:
    """An adapter file and the weight it is applied with (``FILE[:WEIGHT]`` on the command line)."""

    source: str
    weight: float = 1.0


def parse_adapter_spec(text: str) -> AdapterSpec:
    """Parse ``FILE`` or ``FILE:WEIGHT`` (a path containing ':' is kept whole when it exists)."""
    text = str(text).strip()
    if not text:
        raise ConfigError("empty adapter: write --adapter FILE or --adapter FILE:WEIGHT")
    path, sep, weight = text.rpartition(":")
    if not sep or os.path.exists(text):
        return AdapterSpec(text)
    try:
        value = float(weight)
    except ValueError:
        raise ConfigError(f"adapter weight {weight!r} in {text!r} is not a number: write FILE:0.8") from None
    if not math.isfinite(value):
        raise ConfigError(f"adapter weight in {text!r} must be a finite number, e.g. FILE:0.8")
    return AdapterSpec(path, value)


def apply_adapters(pipe, specs: list[AdapterSpec | str]) -> list[Adapter]:
    """Load each adapter into ``pipe.unet`` under its own name and activate them all with their weights."""
    specs = [parse_adapter_spec(s) if isinstance(s, str) else s for s in specs]
    adapters = [load_adapter(spec.source) for spec in specs]  # every file checked before the pipe changes
    names = []
    for i, (spec, adapter) in enumerate(zip(specs, adapters)):
        name = f"esd_{i}_" + re.sub(r"\W", "_", Path(spec.source).stem)
        metadata = {f"unet.{k}": v for k, v in adapter.lora_config.items()}
        pipe.unet.load_lora_adapter(adapter.state_dict, prefix="unet", adapter_name=name, metadata=metadata)
        names.append(name)
    if names:
        pipe.set_adapters(names, adapter_weights=[s.weight for s in specs])
    return adapters
