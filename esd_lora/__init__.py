"""esd-lora: erase concepts from text-to-image diffusion models as small, stackable LoRA adapters.

The public verbs::

    from esd_lora import erase, load_adapter, generate

    adapter = erase("path/to/stable-diffusion", "van gogh", out="no-van-gogh.safetensors")
    print(load_adapter("no-van-gogh.safetensors").metadata)
"""

__version__ = "0.1.0"

from .adapter import Adapter, AdapterMetadata, load_adapter  # noqa: E402
from .attack import attack  # noqa: E402
from .config import METHODS, EraseConfig  # noqa: E402
from .erase import erase  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .families import BUNDLED_BASE  # noqa: E402
from .generate import compare_grid, generate  # noqa: E402
from .stack import AdapterSpec, apply_adapters, parse_adapter_spec  # noqa: E402

__all__ = ["Adapter", "AdapterMetadata", "AdapterSpec", "BUNDLED_BASE", "EraseConfig", "METHODS", "apply_adapters",
           "attack", "compare_grid", "erase", "evaluate", "generate", "load_adapter", "parse_adapter_spec",
           "__version__"]
