"""Random-weight pipelines with the real architectures of SD 1.5 and SDXL, for speed and memory figures.

Real weights cannot be downloaded everywhere, and speed does not depend on weight values. The UNet configs in
``configs/`` are those of the released models; the text encoders have the released widths and depths with a
small letter-level vocabulary (prompts are encoded once per erasure, so this does not change the figures).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

CONFIGS = Path(__file__).parent / "configs"
TEXT = {  # hidden size, layers, heads, MLP width of the released text encoders
    "clip-l": (768, 12, 12, 3072),
    "open-clip-bigg": (1280, 32, 20, 5120),
}


def letter_tokenizer() -> CLIPTokenizer:
    folder = Path(tempfile.mkdtemp(prefix="esd-tok-"))
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _text(name: str, vocab: int, projection: bool = False):
    hidden, layers, heads, mlp = TEXT[name]
    config = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                            intermediate_size=mlp, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                            pad_token_id=1, projection_dim=hidden)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae() -> AutoencoderKL:  # scale factor 8 like the real VAE; its size does not matter for erasing
    return AutoencoderKL(block_out_channels=(8, 8, 8, 8), latent_channels=4, norm_num_groups=8,
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


def build(name: str, *, device: str = "cpu", unet_overrides: dict | None = None):
    """``name`` is 'sd15' or 'sdxl'; ``unet_overrides`` shrinks the UNet for smoke tests."""
    config = json.loads((CONFIGS / f"{name}_unet.json").read_text())
    config.pop("_class_name")
    config.update(unet_overrides or {})
    tok = letter_tokenizer()
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    with torch.device(device):
        unet = UNet2DConditionModel(**config)
        if name == "sdxl":
            pipe = StableDiffusionXLPipeline(vae=_vae(), text_encoder=_text("clip-l", len(tok)),
                                             text_encoder_2=_text("open-clip-bigg", len(tok), projection=True),
                                             tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=scheduler)
        else:
            pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=_text("clip-l", len(tok)), tokenizer=tok,
                                           unet=unet, scheduler=scheduler, safety_checker=None,
                                           feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
