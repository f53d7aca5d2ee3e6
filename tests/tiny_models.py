"""Tiny random pipelines of the real classes (SD 1.x, SD 2.x v-prediction, SDXL), built offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import (AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

FAMILIES = ("sd1", "sd2", "sdxl")


def tokenizer(folder: Path) -> CLIPTokenizer:
    """A CLIP tokenizer over single letters, built from an in-memory vocab (no merges needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(ch, len(vocab))
        vocab.setdefault(ch + "</w>", len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=77)


def _text_config(tok: CLIPTokenizer, hidden: int, **kwargs) -> CLIPTextConfig:
    return CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_attention_heads=4,
                          num_hidden_layers=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                          pad_token_id=1, **kwargs)


def _vae() -> AutoencoderKL:
    return AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3, latent_channels=4,
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=16)


def _scheduler(prediction_type: str) -> DDIMScheduler:
    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type)


def build(family: str, folder: Path, seed: int = 0):
    """Build a tiny pipeline of ``family``, save it (safetensors) to ``folder`` and return it."""
    torch.manual_seed(seed)
    tok = tokenizer(folder / "_tok")
    unet_common = dict(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, in_channels=4,
                       out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8)
    if family == "sdxl":
        text = CLIPTextModel(_text_config(tok, 32))
        text_2 = CLIPTextModelWithProjection(_text_config(tok, 32, projection_dim=32))
        unet = UNet2DConditionModel(**unet_common, cross_attention_dim=64, attention_head_dim=(2, 4),
                                    use_linear_projection=True, addition_embed_type="text_time",
                                    addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32)
        pipe = StableDiffusionXLPipeline(vae=_vae(), text_encoder=text, text_encoder_2=text_2, tokenizer=tok,
                                         tokenizer_2=tok, unet=unet, scheduler=_scheduler("epsilon"))
    else:
        v = family == "sd2"
        unet = UNet2DConditionModel(**unet_common, cross_attention_dim=32, attention_head_dim=4,
                                    use_linear_projection=v)
        pipe = StableDiffusionPipeline(vae=_vae(), text_encoder=CLIPTextModel(_text_config(tok, 32)),
                                       tokenizer=tok, unet=unet,
                                       scheduler=_scheduler("v_prediction" if v else "epsilon"),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, safe_serialization=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe
