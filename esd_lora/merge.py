"""Release erasures: fuse a stack of adapters into the base weights, or export one adapter for other tools.

``merge`` loads the base in fp32, applies the stack exactly as ``generate`` does, fuses it into the UNet with
diffusers' ``fuse_lora`` and removes the LoRA layers, then writes a complete diffusers pipeline folder (and
optionally a single-file checkpoint in the original Stable Diffusion layout). The merged model computes what the
stack computes, up to float rounding, and has no adapter left to switch off.

``export_kohya`` writes an adapter in the kohya / AUTOMATIC1111 / ComfyUI key layout with its true alpha.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from diffusers.utils import convert_state_dict_to_kohya
from safetensors.torch import save_file

from .adapter import Adapter, load_adapter
from .cards import merged_card
from .errors import ConfigError
from .families import SHORT_NAMES, load_pipeline, resolve_dtype
from .hub import check_repo_id, push_folder, refuse_offline
from .outputs import atomic_path, check_folder, check_output, write_folder
from .stack import AdapterSpec, apply_adapters, parse_adapter_specs

_KOHYA_VERSIONS = {"sd1": "sd_v1", "sd2": "sd_v2", "sdxl": "sdxl_base_v1-0"}
ERASURES_FILE = "erasures.json"  # machine-readable list of the erasures baked into a merged folder


def merge(base: str | os.PathLike, adapters: list[AdapterSpec | str], out: str | os.PathLike, *,
          single_file: str | os.PathLike | None = None, dtype: str = "fp32", overwrite: bool = False,
          force: bool = False, device: str | None = "cpu", push: str | None = None, private: bool = False,
          endpoint: str | None = None, token: str | None = None) -> Path:
    """Fuse ``adapters`` (``FILE[:WEIGHT]`` or specs) into ``base`` and write a diffusers folder at ``out``.

    ``dtype`` is the dtype of the saved weights (the fusion itself is done in fp32). With ``single_file`` a
    single safetensors checkpoint in the original Stable Diffusion key layout is written too. Every output is
    refused if it exists (unless ``overwrite``) before any work, and written atomically. With ``push`` (a Hub
    repo id, checked before any work) the folder is then uploaded to that model repo, its card pointing there.

    >>> merge("bundled", ["no-red.safetensors", "no-star.safetensors:0.8"], "bundled-no-red-star")
    """
    if hasattr(base, "unet"):
        raise ConfigError("merge loads its own fp32 copy of the base: pass the base model's path, Hub id or "
                          "short name, not a loaded pipeline")
    specs = parse_adapter_specs(adapters)
    if not specs:
        raise ConfigError("nothing to merge: give at least one --adapter FILE[:WEIGHT]")
    save_dtype = resolve_dtype(dtype, torch.device("cpu")) if dtype != "auto" else torch.float32
    out = check_folder(out, overwrite=overwrite)
    single_file = check_output(single_file, overwrite=overwrite) if single_file is not None else None
    if single_file is not None and single_file.suffix != ".safetensors":
        raise ConfigError(f"--single-file {single_file} must end in .safetensors")
    if push is not None:
        check_repo_id(push)
        refuse_offline(f"push to {push}")

    pipe = load_pipeline(base, device=device, dtype="fp32")
    loaded = apply_adapters(pipe, specs, force=force)
    names = list(pipe.unet.peft_config)
    pipe.fuse_lora(components=["unet"], lora_scale=1.0, adapter_names=names)
    pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers go
    leftover = [k for k in pipe.unet.state_dict() if "lora" in k]
    if leftover:  # a diffusers/peft change must not silently ship adapter keys in a "merged" model
        raise RuntimeError(f"LoRA keys left after fusing: {leftover[:3]}")
    erasures = [_erasure(spec, adapter) for spec, adapter in zip(specs, loaded)]
    base_id = next((short for short, path in SHORT_NAMES.items() if str(base) in (short, path)), str(base))
    pipe.to(save_dtype)

    def write(folder: Path) -> None:
        pipe.save_pretrained(folder, safe_serialization=True)
        (folder / ERASURES_FILE).write_text(json.dumps({"base_model": base_id, "dtype": dtype,
                                                        "erasures": erasures}, indent=2))
        merged_card(base_id=base_id, erasures=erasures, dtype=dtype,
                    single_file=single_file.name if single_file else None,
                    repo_hint=push or str(out)).save(folder / "README.md")

    write_folder(out, write, overwrite=overwrite)
    if single_file is not None:
        from .single_file import save_single_file

        save_single_file(pipe, single_file, metadata={"esd_lora_erasures": json.dumps(erasures)})
    if push is not None:
        push_folder(out, push, private=private, endpoint=endpoint, token=token)
    return out


def _erasure(spec: AdapterSpec, adapter: Adapter) -> dict:
    config = adapter.metadata.config
    return {"adapter": Path(spec.source).name, "sha256": adapter.sha256, "weight": spec.weight,
            "concepts": config.concepts, "method": config.method, "iterations": config.iterations,
            "eta": config.eta, "rank": config.rank, "alpha": config.alpha,
            "base_model": adapter.metadata.base_model, "base_fingerprint": adapter.metadata.base_fingerprint}


def kohya_state_dict(adapter: Adapter) -> dict[str, torch.Tensor]:
    """The adapter's tensors in kohya's layout (``lora_unet_<module>.lora_down/lora_up/alpha``).

    diffusers' converter writes ``alpha = rank``; an esd-lora adapter may have any alpha, so the true value is
    written (LoRA scale = alpha / rank in every tool that reads this layout).
    """
    converted = convert_state_dict_to_kohya(adapter.state_dict)
    alpha = float(adapter.metadata.config.alpha)
    return {k: (torch.tensor(alpha) if k.endswith(".alpha") else v.contiguous()) for k, v in converted.items()}


def export_kohya(adapter: str | os.PathLike | Adapter, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``adapter`` as a kohya-layout LoRA file (AUTOMATIC1111, ComfyUI, ``load_lora_weights``)."""
    adapter = adapter if isinstance(adapter, Adapter) else load_adapter(adapter)
    out = check_output(out, overwrite=overwrite)
    tensors = kohya_state_dict(adapter)
    config = adapter.metadata.config
    family = adapter.metadata.family
    header = {"format": "pt", "ss_network_module": "networks.lora", "ss_network_dim": str(config.rank),
              "ss_network_alpha": f"{config.alpha:g}", "ss_base_model_version": _KOHYA_VERSIONS.get(family, family),
              "esd_lora": adapter.header()["esd_lora"]}
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=header)
    return out
