"""What differs between Stable Diffusion 1.x, 2.x and SDXL: loading, prompt encoding, added conditioning.

Everything model-specific the training loop needs sits behind :class:`Family`: ``encode`` turns prompts into a
:class:`Conditioning` (text states, plus SDXL's pooled embeddings and time ids), and ``Conditioning.unet_kwargs``
gives the keyword arguments of the UNet's forward. The prediction type (epsilon or v) is read from the
scheduler config; the ESD target is built in that space (see ``objective.py``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import BaseModelNotFoundError, NotAPipelineError, UnsupportedPipelineError

BUNDLED_BASE = str(Path(__file__).resolve().parent / "bundled" / "base")
SHORT_NAMES = {"bundled": BUNDLED_BASE}  # names --base answers to besides paths and Hub ids
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


@dataclass
class Conditioning:
    """Text conditioning for a batch of prompts, in the form the UNet takes it."""

    hidden: torch.Tensor
    text_embeds: torch.Tensor | None = None
    time_ids: torch.Tensor | None = None

    def unet_kwargs(self) -> dict:
        kwargs: dict = {"encoder_hidden_states": self.hidden}
        if self.text_embeds is not None:
            kwargs["added_cond_kwargs"] = {"text_embeds": self.text_embeds, "time_ids": self.time_ids}
        return kwargs

    def __getitem__(self, index) -> "Conditioning":
        index = slice(index, index + 1) if isinstance(index, int) else index
        return Conditioning(*(None if t is None else t[index] for t in (self.hidden, self.text_embeds,
                                                                         self.time_ids)))

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        def join(tensors):
            return None if tensors[0] is None else torch.cat(tensors)
        return Conditioning(join([c.hidden for c in items]), join([c.text_embeds for c in items]),
                            join([c.time_ids for c in items]))


class Family:
    """Stable Diffusion 1.x / 2.x: one CLIP text encoder, no added conditioning."""

    name = "sd"

    def __init__(self, pipe) -> None:
        self.pipe = pipe

    @property
    def prediction_type(self) -> str:
        return self.pipe.scheduler.config.get("prediction_type", "epsilon")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        unet = self.pipe.unet
        size = unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return (unet.config.in_channels, *size)

    @property
    def label(self) -> str:
        """sd1, sd2 or sdxl, as recorded in the adapter metadata."""
        return "sd2" if self.pipe.unet.config.cross_attention_dim == 1024 else "sd1"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        """Encode prompts; the empty prompt gives the pipeline's own unconditional embedding."""
        embeds, _ = self.pipe.encode_prompt(prompts, self.pipe.device, 1, False)
        return Conditioning(embeds)


class SDXLFamily(Family):
    """SDXL: two text encoders, pooled embeddings and added time ids."""

    name = "sdxl"
    label = "sdxl"

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> Conditioning:
        pipe = self.pipe
        # Ask for the negative branch too, so the empty prompt follows force_zeros_for_empty_prompt exactly
        # as the pipeline's own classifier-free guidance does.
        cond, uncond, pooled, uncond_pooled = pipe.encode_prompt(
            prompts, device=pipe.device, num_images_per_prompt=1, do_classifier_free_guidance=True)
        empty = torch.tensor([p == "" for p in prompts], device=cond.device)
        hidden = torch.where(empty[:, None, None], uncond, cond)
        pooled = torch.where(empty[:, None], uncond_pooled, pooled)
        _, height, width = self.latent_shape
        scale = pipe.vae_scale_factor
        size = (height * scale, width * scale)
        time_ids = torch.tensor([[*size, 0, 0, *size]], dtype=hidden.dtype, device=hidden.device)
        return Conditioning(hidden, pooled, time_ids.repeat(len(prompts), 1))


def family_of(pipe) -> Family:
    """The :class:`Family` wrapper for a loaded pipeline, or a typed error for an unsupported class."""
    name = type(pipe).__name__
    if name == "StableDiffusionXLPipeline":
        return SDXLFamily(pipe)
    if name == "StableDiffusionPipeline":
        return Family(pipe)
    raise UnsupportedPipelineError(
        f"{name} is not supported: esd-lora trains {' and '.join(SUPPORTED_PIPELINES)} models")


def resolve_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype != "auto":
        return _DTYPES[dtype]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def as_pipeline(base, *, device: str | None = None, dtype: str = "auto"):
    """``base`` itself if it is a loaded pipeline, else :func:`load_pipeline` of it."""
    return base if hasattr(base, "unet") else load_pipeline(base, device=device, dtype=dtype)


def load_pipeline(base: str | os.PathLike, *, device: str | None = None, dtype: str = "auto"):
    """Load a Stable Diffusion 1.x/2.x or SDXL pipeline from a local diffusers folder or a Hub id.

    Only safetensors weights are loaded (never pickle). The safety checker is not loaded: erasure is measured
    on what the model itself generates.
    """
    import diffusers

    if str(base) == "bundled" and not Path(BUNDLED_BASE, "model_index.json").is_file():
        raise BaseModelNotFoundError(f"the bundled base model is not in this install ({BUNDLED_BASE}): build it with "
                                     "'python scripts/build_bundled_base.py', or pass --base")
    base = SHORT_NAMES.get(str(base), str(base))
    class_name = _pipeline_class_name(base)
    if class_name not in SUPPORTED_PIPELINES:
        raise UnsupportedPipelineError(
            f"{base} is a {class_name}: esd-lora trains {' and '.join(SUPPORTED_PIPELINES)} models")
    torch_device = resolve_device(device)
    kwargs = {_dtype_keyword(): resolve_dtype(dtype, torch_device), "use_safetensors": True}
    if class_name == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    try:
        pipe = getattr(diffusers, class_name).from_pretrained(base, **kwargs)
    except (OSError, ValueError, EnvironmentError) as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NotAPipelineError(
            f"could not load {base} as a {class_name} with safetensors weights ({first_line}); "
            "check the folder is complete, or convert .bin/.ckpt weights to safetensors") from exc
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(torch_device)


def _dtype_keyword() -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` in recent diffusers (where ``torch_dtype`` warns that it is
    deprecated), ``torch_dtype`` in the releases before."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


RECOMMENDED_FILE = "esd_lora.json"
"""A file a base model folder may carry: ``{"erase": {option: value}, "anchors": [prompt, ...], "scenes": [prompt,
...], "by_concept": [{"concepts": [name, ...], "erase": {option: value}}, ...]}``: the erasure settings that suit the
base, prompts to preserve by default (those naming an erased concept are left out), typical prompts from which an
erasure's contexts are taken (those naming the erased concept, with the concept as the slot: "striped red circle"
gives "striped {} circle" when red is erased), and settings for some concepts on top of ``erase`` (a group applies
when every erased concept is one of its names, any case; ``"contexts": []`` there turns the scenes off)."""

RECOMMENDED_KEYS = ("erase", "anchors", "scenes", "by_concept")


def base_folder(base) -> Path | None:
    """The folder ``base`` names (a path or a short name), or the one a loaded pipeline was loaded from; None for
    a pipeline without a name. Hub ids give a path that does not exist."""
    name = getattr(base, "name_or_path", None) if hasattr(base, "unet") else base
    return Path(SHORT_NAMES.get(str(name), str(name))).expanduser() if name else None


def recommended_options(base) -> tuple[dict, Path | None]:
    """The erasure settings a local base folder recommends (``RECOMMENDED_FILE``), and that file's path.

    Small models need other settings than Stable Diffusion (the bundled base: a higher learning rate). Hub ids
    and folders without the file recommend nothing.
    """
    folder = base_folder(base)
    path = folder / RECOMMENDED_FILE if folder else None
    if path is None or not path.is_file():
        return {}, None
    try:
        data = json.loads(path.read_text())
        unknown = sorted(set(data) - set(RECOMMENDED_KEYS)) if isinstance(data, dict) else []
        if unknown:
            raise TypeError(f"unknown key(s) {', '.join(map(repr, unknown))}; "
                            f"the keys are {', '.join(RECOMMENDED_KEYS)}")
        options = dict(data.get("erase", {}))
        lists = {key: data.get(key, []) for key in ("anchors", "scenes")}
        for key, prompts in lists.items():
            if not _strings(prompts):
                raise TypeError(f"'{key}' is not a list of prompts")
        groups = [_checked_group(group) for group in _list(data.get("by_concept", []), "by_concept")]
    except (ValueError, TypeError, AttributeError) as exc:
        raise NotAPipelineError(f"{path} is not a valid esd-lora settings file ({exc}): fix or delete it") from exc
    options.update({key: prompts for key, prompts in lists.items() if prompts})
    if groups:
        options["by_concept"] = groups
    return options, path


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _list(value, key: str) -> list:
    if not isinstance(value, list):
        raise TypeError(f"'{key}' is not a list")
    return value


def _checked_group(group) -> dict:
    """One entry of ``by_concept``, checked: ``{"concepts": [name, ...], "erase": {option: value}}``."""
    if not isinstance(group, dict) or set(group) != {"concepts", "erase"} or not _strings(group["concepts"]) \
            or not group["concepts"] or not isinstance(group["erase"], dict):
        raise TypeError(f'a \'by_concept\' entry is not {{"concepts": [name, ...], "erase": {{option: value}}}}: '
                        f"{json.dumps(group)[:80]}")
    return {"concepts": list(group["concepts"]), "erase": dict(group["erase"])}


def _pipeline_class_name(base: str) -> str:
    path = Path(base).expanduser()
    if path.exists():
        index = path / "model_index.json"
        if not path.is_dir() or not index.is_file():
            raise NotAPipelineError(
                f"{base} is not a diffusers pipeline folder (no model_index.json): pass the folder that "
                "pipeline.save_pretrained() wrote, or a Hub id such as 'stable-diffusion-v1-5/stable-diffusion-v1-5'")
        return _read_class_name(index, base)
    if base.startswith((".", "/", "~")) or not _HUB_ID.match(base):
        raise BaseModelNotFoundError(f"base model {base} does not exist: pass a diffusers folder or a Hub id")
    from huggingface_hub import hf_hub_download

    try:
        index = hf_hub_download(base, "model_index.json")
    except Exception as exc:  # network, auth, missing repo: all mean "cannot get this base"
        raise BaseModelNotFoundError(
            f"{base} is not a local folder and could not be fetched from the Hub ({type(exc).__name__}): "
            "check the path or Hub id, your network and HF_TOKEN") from exc
    return _read_class_name(Path(index), base)


def _read_class_name(index: Path, base: str) -> str:
    try:
        return str(json.loads(index.read_text())["_class_name"])
    except (ValueError, KeyError) as exc:
        raise NotAPipelineError(f"{index} is not a valid model_index.json: re-save {base} with diffusers") from exc
