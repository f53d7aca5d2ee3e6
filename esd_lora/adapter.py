"""The adapter file: one self-describing safetensors file.

* Tensors: keys as diffusers writes them (``unet.<module>.lora_A.weight`` / ``lora_B.weight``).
* Header ``lora_adapter_metadata``: the LoRA config, so that stock ``pipeline.load_lora_weights(path)``
  restores the right alpha (without it diffusers assumes alpha = rank).
* Header ``esd_lora``: our metadata as JSON: the :class:`~esd_lora.config.EraseConfig`, the base model id and a
  fingerprint of its weights, the library version, wall time and final loss.

Files are written to a temporary file next to the destination and renamed into place, so an interrupted save
never leaves a partial file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import EraseConfig
from .errors import AdapterNotFoundError, CorruptAdapterError, NotAnEsdAdapterError
from .outputs import atomic_path, check_output

METADATA_KEY = "esd_lora"
LORA_METADATA_KEY = "lora_adapter_metadata"  # the header entry diffusers reads the LoRA config from
FORMAT_VERSION = 1
_FINGERPRINT_SAMPLES = 64


@dataclass
class AdapterMetadata:
    """What an esd-lora adapter says about itself."""

    config: EraseConfig
    base_model: str
    base_fingerprint: str
    family: str
    prediction_type: str
    esd_lora_version: str
    wall_time_s: float
    final_loss: float
    created: str
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["config"] = self.config.to_dict()
        extra = data.pop("extra")
        return {**data, **extra}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AdapterMetadata":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = sorted(known - set(data) - {"format_version"})
        if missing:
            raise NotAnEsdAdapterError(f"esd-lora metadata lacks {', '.join(missing)}: the file is damaged or "
                                       "was not written by esd-lora; retrain or re-download it")
        config = EraseConfig.from_dict(data["config"])
        values = {k: data[k] for k in known if k in data and k != "config"}
        return cls(config=config, **values, extra={k: v for k, v in data.items() if k not in known})


@dataclass
class Adapter:
    """An erasure: LoRA tensors in diffusers' key layout, the LoRA config and the esd-lora metadata."""

    state_dict: dict[str, torch.Tensor]
    lora_config: dict[str, Any]
    metadata: AdapterMetadata
    path: Path | None = None

    @property
    def num_parameters(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())

    @property
    def sha256(self) -> str | None:
        """The sha256 of the file the adapter was read from or saved to (``None`` before it is saved)."""
        return file_sha256(self.path) if self.path else None

    def header(self) -> dict[str, str]:
        """The safetensors header entries of this adapter."""
        lora = {f"unet.{k}": v for k, v in self.lora_config.items()}
        return {"format": "pt",
                LORA_METADATA_KEY: json.dumps(lora, indent=2, sort_keys=True),
                METADATA_KEY: json.dumps(self.metadata.to_dict(), sort_keys=True)}

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the adapter atomically to ``path`` (a ``.safetensors`` file) and return the path."""
        path = check_output(path, overwrite=overwrite)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict.items()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=self.header())
        self.path = path
        return path


def load_adapter(path: str | os.PathLike) -> Adapter:
    """Read an esd-lora adapter file: tensors, LoRA config and metadata, with typed errors for bad files."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise AdapterNotFoundError(f"adapter file {path} does not exist: check the path, or train one with "
                                   "'esd-lora erase CONCEPT --out FILE'")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            state_dict = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CorruptAdapterError(f"{path} is not a readable safetensors file ({exc}); it may be truncated: "
                                  "download or train it again") from exc
    if METADATA_KEY not in header:
        raise NotAnEsdAdapterError(f"{path} has no esd-lora metadata: it is not an esd-lora adapter "
                                   "(load other LoRA files with diffusers directly)")
    try:
        metadata = AdapterMetadata.from_dict(json.loads(header[METADATA_KEY]))
        lora = json.loads(header.get(LORA_METADATA_KEY, "{}"))
    except (ValueError, TypeError) as exc:
        raise CorruptAdapterError(f"{path} has an unreadable esd-lora header ({exc}): download or train it "
                                  "again") from exc
    lora_config = {k.removeprefix("unet."): v for k, v in lora.items()}
    if not state_dict or not all(k.startswith("unet.") and ".lora_" in k for k in state_dict):
        raise CorruptAdapterError(f"{path} holds no LoRA tensors in diffusers' layout: download or train it again")
    return Adapter(state_dict=state_dict, lora_config=lora_config, metadata=metadata, path=path)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def base_fingerprint(unet: torch.nn.Module) -> str:
    """A short, dtype-stable fingerprint of the base UNet weights (adapter layers ignored).

    Hashes every tensor's name and shape, and a fixed sample of its values rounded to fp16, so an fp16 copy of
    a model fingerprints the same as its fp32 original while a different model (or a fine-tune) does not.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(unet.state_dict().items()):
        if ".lora_" in name:
            continue
        name = name.replace(".base_layer.", ".")
        flat = tensor.detach().reshape(-1)
        count = min(flat.numel(), _FINGERPRINT_SAMPLES)  # evenly spaced, in integers (floats overflow past 2**24)
        index = torch.arange(count, dtype=torch.int64) * (flat.numel() - 1) // max(count - 1, 1)
        sample = flat[index.to(flat.device)].to("cpu", torch.float32).to(torch.float16)
        digest.update(f"{name}:{tuple(tensor.shape)};".encode())
        digest.update(sample.numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]
