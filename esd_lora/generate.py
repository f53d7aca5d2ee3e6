"""Generate with and without erasures, from the same seeds, and lay the images out side by side."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from PIL import Image, ImageDraw, ImageFont

from .config import positive_int
from .errors import ConfigError
from .families import as_pipeline, family_of
from .stack import AdapterSpec, parse_adapter_specs, with_and_without

_MIN_TILE = 128  # small models make tiny images: scale tiles up so a person can see them
_LABEL_HEIGHT = 18


@dataclass
class Comparison:
    """Images of the base model and of base + adapters, column ``j`` generated from seed ``seeds[j]``."""

    prompt: str
    seeds: list[int]
    base: list[Image.Image]
    erased: list[Image.Image]
    label: str  # the adapters, e.g. "no-red.safetensors + no-star.safetensors x0.8"; empty without adapters

    def grid(self) -> Image.Image:
        """Top row base, bottom row base + adapters; one row when there are no adapters."""
        rows = {"base": self.base, self.label: self.erased} if self.label else {"base": self.base}
        return compare_grid(rows, title=self.prompt)


def generate(base, prompt: str, *, adapters: list[AdapterSpec | str] = (), seed: int = 0, num_images: int = 4,
             steps: int = 30, guidance_scale: float = 7.5, negative_prompt: str | None = None,
             device: str | None = None, dtype: str = "auto", force: bool = False) -> Comparison:
    """Generate ``num_images`` images of ``prompt`` from the base and from base + ``adapters``, same seeds.

    ``base`` is a diffusers folder, a Hub id or a loaded pipeline; the pipeline's adapters are unloaded at
    the end, so a loaded pipeline is returned to its base state. ``force`` applies adapters trained on another
    base of the same architecture.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ConfigError("empty prompt: give the text to generate, e.g. 'a painting in the style of van gogh'")
    positive_int("num_images", num_images)
    positive_int("steps", steps)
    specs = parse_adapter_specs(adapters)
    pipe = as_pipeline(base, device=device, dtype=dtype)
    family_of(pipe)  # refuses unsupported pipelines with a typed error
    seeds = [seed + j for j in range(num_images)]

    def run() -> list[Image.Image]:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return pipe([prompt] * num_images, negative_prompt=[negative_prompt] * num_images if negative_prompt
                    else None, num_inference_steps=steps, guidance_scale=guidance_scale,
                    generator=generators, output_type="pil").images

    base_images, erased_images, _ = with_and_without(pipe, specs, run, force=force)
    label = " + ".join(os.path.basename(s.source) + (f" x{s.weight:g}" if s.weight != 1 else "") for s in specs)
    return Comparison(prompt=prompt, seeds=seeds, base=base_images, erased=erased_images, label=label)


def compare_grid(rows: dict[str, list[Image.Image]], *, title: str | None = None) -> Image.Image:
    """One row of images per label, each row headed by its label (and the whole grid by ``title``)."""
    tiles = [img for images in rows.values() for img in images]
    width, height = tiles[0].size
    scale = max(1, -(-_MIN_TILE // min(width, height)))
    tile_w, tile_h = width * scale, height * scale
    columns = max(len(images) for images in rows.values())
    top = _LABEL_HEIGHT if title else 0
    canvas = Image.new("RGB", (columns * tile_w, top + len(rows) * (tile_h + _LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    if title:
        draw.text((4, 3), title, fill="black", font=font)
    for r, (label, images) in enumerate(rows.items()):
        y = top + r * (tile_h + _LABEL_HEIGHT)
        draw.text((4, y + 3), label, fill="black", font=font)
        for c, img in enumerate(images):
            canvas.paste(img.convert("RGB").resize((tile_w, tile_h), Image.NEAREST), (c * tile_w, y + _LABEL_HEIGHT))
    return canvas
