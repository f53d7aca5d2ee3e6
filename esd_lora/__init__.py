"""esd-lora: erase concepts from text-to-image diffusion models as small, stackable LoRA adapters.

The public verbs::

    from esd_lora import erase, load_adapter, generate

    adapter = erase("path/to/stable-diffusion", "van gogh", out="no-van-gogh.safetensors")
    print(load_adapter("no-van-gogh.safetensors").metadata)

The verbs are imported on first use (torch and diffusers take seconds to import), so ``esd-lora --help`` and
argument errors answer at once.
"""

from __future__ import annotations

import importlib
import logging
import sys
import types
from typing import TYPE_CHECKING

__version__ = "0.1.0"


class _TorchvisionFallbackFilter(logging.Filter):
    """Without torchvision, importing diffusers' pipelines makes transformers warn that its CLIP and SigLIP image
    processors fall back to their PIL versions. esd-lora never processes an image with them (a safety checker's
    feature extractor works the same with either), so the two lines on every command are noise; other warnings of
    that logger pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_TorchvisionFallbackFilter())

# public name -> submodule that defines it
_EXPORTS = {
    "Adapter": "adapter", "AdapterMetadata": "adapter", "load_adapter": "adapter",
    "attack": "attack",
    "METHODS": "config", "EraseConfig": "config",
    "erase": "erase",
    "evaluate": "evaluate",
    "BUNDLED_BASE": "families",
    "compare_grid": "generate", "generate": "generate",
    "AdapterSpec": "stack", "apply_adapters": "stack", "parse_adapter_spec": "stack",
}

__all__ = ["Adapter", "AdapterMetadata", "AdapterSpec", "BUNDLED_BASE", "EraseConfig", "METHODS", "apply_adapters",
           "attack", "compare_grid", "erase", "evaluate", "generate", "load_adapter", "parse_adapter_spec",
           "__version__"]

if TYPE_CHECKING:
    from .adapter import Adapter, AdapterMetadata, load_adapter
    from .attack import attack
    from .config import METHODS, EraseConfig
    from .erase import erase
    from .evaluate import evaluate
    from .families import BUNDLED_BASE
    from .generate import compare_grid, generate
    from .stack import AdapterSpec, apply_adapters, parse_adapter_spec


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


class _Package(types.ModuleType):
    """Keeps ``esd_lora.erase`` (and ``attack``, ``evaluate``, ``generate``) the function of that name: importing
    the submodule of the same name would otherwise bind the package attribute to the submodule."""

    def __setattr__(self, name: str, value) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == name:
            return  # the submodule stays reachable through sys.modules and ``from esd_lora.erase import ...``
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
