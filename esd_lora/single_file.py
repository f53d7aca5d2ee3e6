"""Export a loaded SD 1.x / 2.x / SDXL pipeline to one safetensors checkpoint in the original ("ckpt") key layout.

This is the layout AUTOMATIC1111 and ComfyUI read and that ``StableDiffusionPipeline.from_single_file`` /
``StableDiffusionXLPipeline.from_single_file`` load: the UNet under ``model.diffusion_model.``, the VAE under
``first_stage_model.`` and the text encoder(s) under

* SD 1.x: ``cond_stage_model.transformer.text_model.*`` (transformers' CLIP names);
* SD 2.x: ``cond_stage_model.model.*`` (OpenCLIP names: fused ``attn.in_proj_*``, ``transformer.resblocks.N``);
* SDXL: ``conditioner.embedders.0.transformer.text_model.*`` (CLIP) and ``conditioner.embedders.1.model.*``
  (OpenCLIP, with ``text_projection`` stored transposed, as OpenCLIP's ``x @ text_projection`` expects).

The mapping is the inverse of diffusers' ``convert_ldm_*`` converters (``loaders/single_file_utils.py``) and is built
from the model's own structure (number of blocks, layers per block, which blocks have attention), so loading the
file back with ``from_single_file(file, config=<diffusers folder>)`` gives back the exact same tensors. (diffusers
tells SDXL's two encoders apart by key *and width*, 768 and 1280 in every real SDXL; in a toy SDXL whose encoders
are equally wide it loads ``conditioner.embedders.0`` into ``text_encoder_2`` too, whatever the file holds.)

SD 2.x text encoder: OpenCLIP ViT-H has 24 blocks, but SD 2.x conditions on the penultimate one, so diffusers'
``text_encoder`` holds only the first 23 (and no ``text_projection``). Exactly the blocks the pipeline has are
written (``resblocks.0`` to ``resblocks.22`` for a real 2.x model): the dropped block is unused by SD 2.x and its
weights are not in the pipeline; diffusers ignores ``resblocks.23`` on load anyway, so nothing is lost either way.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import safetensors.torch
import torch

from .errors import SingleFileExportError
from .outputs import atomic_path

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
ORIGINAL_PREFIXES = (UNET_PREFIX, VAE_PREFIX, "cond_stage_model.", "conditioner.embedders.")

OriginalFamily = Literal["sd1", "sd2", "sdxl"]
_Table = dict[str, tuple[str, dict[str, str]]]  # diffusers module path -> (original path, renames of its children)

_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
_OPEN_CLIP_LAYER = {"self_attn.out_proj": "attn.out_proj", "layer_norm1": "ln_1", "layer_norm2": "ln_2",
                    "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}


def original_family(pipe) -> OriginalFamily:
    """The original model family of ``pipe``: ``"sdxl"``, ``"sd2"`` or ``"sd1"``.

    SDXL if the pipeline has a ``text_encoder_2``. SD 2.x if the UNet's ``cross_attention_dim`` is 1024 (OpenCLIP
    ViT-H: every real 2.x model), or if it uses linear projections and the scheduler predicts ``v_prediction`` (how
    tiny test models of 2.x are told apart). SD 1.x otherwise.
    """
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not isinstance(pipe, (StableDiffusionPipeline, StableDiffusionXLPipeline)):
        raise SingleFileExportError(f"cannot export a {type(pipe).__name__} as a single file: only "
                                    "StableDiffusionPipeline and StableDiffusionXLPipeline are supported")
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    config = pipe.unet.config
    v_prediction = pipe.scheduler.config.get("prediction_type") == "v_prediction"
    return "sd2" if config.cross_attention_dim == 1024 or (config.use_linear_projection and v_prediction) else "sd1"


def to_original_state_dict(pipe) -> dict[str, torch.Tensor]:
    """Original-layout state dict of the pipeline's UNet ('model.diffusion_model.'), VAE ('first_stage_model.') and
    text encoder(s)."""
    family = original_family(pipe)
    encoders = ("text_encoder", "text_encoder_2") if family == "sdxl" else ("text_encoder",)
    missing = [name for name in ("unet", "vae", *encoders) if getattr(pipe, name, None) is None]
    if missing:
        raise SingleFileExportError(f"cannot export a pipeline without its {' and '.join(missing)}: a single-file "
                                    "checkpoint holds the UNet, the VAE and every text encoder")
    state = _prefixed(UNET_PREFIX, _rename(_weights(pipe.unet, "UNet"), _unet_table(pipe.unet), "UNet"))
    state |= _prefixed(VAE_PREFIX, _vae_state_dict(pipe.vae))
    if family == "sd1":
        state |= _clip_state_dict(pipe.text_encoder, "cond_stage_model.transformer.")
    elif family == "sd2":
        state |= _open_clip_state_dict(pipe.text_encoder, "cond_stage_model.model.")
    else:
        state |= _clip_state_dict(pipe.text_encoder, "conditioner.embedders.0.transformer.")
        state |= _open_clip_state_dict(pipe.text_encoder_2, "conditioner.embedders.1.model.")
    return state


def save_single_file(pipe, path: str | os.PathLike, *, dtype: torch.dtype | None = None,
                     metadata: dict[str, str] | None = None) -> Path:
    """Write it to `path` atomically (a temporary file in the same folder, then renamed); tensors
    contiguous, cast to dtype if given."""
    path = Path(path).expanduser()
    tensors = {}
    for key, value in to_original_state_dict(pipe).items():
        cast = dtype if dtype is not None and value.is_floating_point() else value.dtype
        tensors[key] = value.to("cpu", cast).contiguous()
    with atomic_path(path) as tmp:
        safetensors.torch.save_file(tensors, tmp, metadata=metadata)
    return path


def _weights(module: torch.nn.Module, what: str) -> dict[str, torch.Tensor]:
    """``module``'s state dict, refused if it still has (unfused) LoRA layers."""
    state = {k: v.detach() for k, v in module.state_dict().items()}
    if any(".base_layer." in k or ".lora_" in k for k in state):
        raise SingleFileExportError(f"the {what} has LoRA layers: fuse them first (pipe.fuse_lora(); "
                                    "pipe.unload_lora_weights()) so the checkpoint holds plain weights")
    return state


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state.items()}


def _rename(state: dict[str, torch.Tensor], table: _Table, what: str) -> dict[str, torch.Tensor]:
    """Rename each key by its longest module path in ``table``; a key no entry covers is an error."""
    out = {}
    for key, value in state.items():
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):
            if (prefix := ".".join(parts[:n])) in table:
                new_prefix, children = table[prefix]
                module, name = ".".join(parts[n:-1]), parts[-1]
                out[".".join(p for p in (new_prefix, children.get(module, module), name) if p)] = value
                break
        else:
            raise SingleFileExportError(f"the {what} weight {key!r} has no place in the original layout "
                                        "(an architecture the original Stable Diffusion code does not have)")
    return out


def _unet_table(unet: torch.nn.Module) -> _Table:
    """Module paths of a diffusers UNet2DConditionModel -> the original UNetModel's, from its structure.

    The original numbers blocks flat: ``input_blocks`` hold ``layers_per_block`` (resnet, attention) pairs per down
    block then its downsampler, ``output_blocks`` hold ``layers_per_block + 1`` pairs per up block, the last one
    followed by the upsampler, and ``middle_block`` alternates resnet / attention.
    """
    per_block = unet.config.layers_per_block
    if not isinstance(per_block, int):
        raise SingleFileExportError(f"the UNet has per-block layer counts {per_block}: the original layout (and "
                                    "diffusers' converter) needs one layers_per_block for every block")
    plain = {"conv_in": "input_blocks.0.0", "time_embedding.linear_1": "time_embed.0",
             "time_embedding.linear_2": "time_embed.2", "conv_norm_out": "out.0", "conv_out": "out.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "class_embedding.linear_1": "label_emb.0.0", "class_embedding.linear_2": "label_emb.0.2"}
    table: _Table = {k: (v, {}) for k, v in plain.items()}
    stride = per_block + 1
    for b in range(len(unet.down_blocks)):
        for j in range(per_block):
            table[f"down_blocks.{b}.resnets.{j}"] = (f"input_blocks.{1 + b * stride + j}.0", _UNET_RESNET)
            table[f"down_blocks.{b}.attentions.{j}"] = (f"input_blocks.{1 + b * stride + j}.1", {})
        table[f"down_blocks.{b}.downsamplers.0.conv"] = (f"input_blocks.{1 + b * stride + per_block}.0.op", {})
    if unet.mid_block is not None:
        for k in range(len(unet.mid_block.resnets)):
            table[f"mid_block.resnets.{k}"] = (f"middle_block.{2 * k}", _UNET_RESNET)
            table[f"mid_block.attentions.{k}"] = (f"middle_block.{2 * k + 1}", {})
    for b, block in enumerate(unet.up_blocks):
        for j in range(stride):
            table[f"up_blocks.{b}.resnets.{j}"] = (f"output_blocks.{b * stride + j}.0", _UNET_RESNET)
            table[f"up_blocks.{b}.attentions.{j}"] = (f"output_blocks.{b * stride + j}.1", {})
        slot = 2 if hasattr(block, "attentions") else 1
        table[f"up_blocks.{b}.upsamplers.0.conv"] = (f"output_blocks.{b * stride + per_block}.{slot}.conv", {})
    return table


def _vae_state_dict(vae: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The VAE in the original layout; the mid attention's projections become 1x1 convolutions, as stored there."""
    table: _Table = {"quant_conv": ("quant_conv", {}), "post_quant_conv": ("post_quant_conv", {})}
    for part, blocks, stage in (("encoder", vae.encoder.down_blocks, "down"), ("decoder", vae.decoder.up_blocks, "up")):
        for name, original in (("conv_in", "conv_in"), ("conv_out", "conv_out"), ("conv_norm_out", "norm_out")):
            table[f"{part}.{name}"] = (f"{part}.{original}", {})
        for i, block in enumerate(blocks):
            index = i if stage == "down" else len(blocks) - 1 - i  # the original decoder counts up blocks upwards
            ours, theirs = f"{part}.{stage}_blocks.{i}", f"{part}.{stage}.{index}"
            for j in range(len(block.resnets)):
                table[f"{ours}.resnets.{j}"] = (f"{theirs}.block.{j}", _VAE_RESNET)
            table[f"{ours}.{stage}samplers.0.conv"] = (f"{theirs}.{stage}sample.conv", {})
        for k in range(len(getattr(vae, part).mid_block.resnets)):
            table[f"{part}.mid_block.resnets.{k}"] = (f"{part}.mid.block_{k + 1}", _VAE_RESNET)
        table[f"{part}.mid_block.attentions.0"] = (f"{part}.mid.attn_1", _VAE_ATTENTION)
    state = _rename(_weights(vae, "VAE"), table, "VAE")
    return {k: v[:, :, None, None] if ".mid.attn_1." in k and v.ndim == 2 else v for k, v in state.items()}


def _text_weights(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's weights with the ``text_model.`` level that the original layout (and transformers < 5.6,
    and ``CLIPTextModelWithProjection``) has; transformers >= 5.6 flattens ``CLIPTextModel``."""
    state = _weights(encoder, "text encoder")
    return state if hasattr(encoder, "text_model") else _prefixed("text_model.", state)


def _clip_state_dict(encoder: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder under ``prefix``, keeping transformers' names."""
    return _prefixed(prefix, _text_weights(encoder))


def _open_clip_state_dict(encoder: torch.nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder under ``prefix`` in OpenCLIP's names: q/k/v fused, projection as ``x @ P``."""
    state = {k.removeprefix("text_model."): v for k, v in _text_weights(encoder).items()}
    out = {"token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           "positional_embedding": state.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": state.pop("final_layer_norm.weight"),
           "ln_final.bias": state.pop("final_layer_norm.bias")}
    if "text_projection.weight" in state:
        out["text_projection"] = state.pop("text_projection.weight").T
    for i in range(encoder.config.num_hidden_layers):
        ours, theirs = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{theirs}attn.in_proj_{kind}"] = torch.cat([state.pop(f"{ours}self_attn.{p}_proj.{kind}")
                                                           for p in "qkv"])
            for name, original in _OPEN_CLIP_LAYER.items():
                out[f"{theirs}{original}.{kind}"] = state.pop(f"{ours}{name}.{kind}")
    if state:
        raise SingleFileExportError(f"text encoder weights with no OpenCLIP name: {sorted(state)[:5]}")
    return _prefixed(prefix, out)
