"""Single-file export: original-layout keys, exact round trip through stock diffusers' from_single_file, offline."""

import socket

import numpy as np
import pytest
import safetensors.torch
import torch
import tiny_models
from diffusers import (AutoencoderKL, DDPMPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline,
                       UNet2DConditionModel, UNet2DModel)
from diffusers.loaders.single_file_utils import (convert_ldm_unet_checkpoint, convert_ldm_vae_checkpoint,
                                                 convert_open_clip_checkpoint, infer_diffusers_model_type,
                                                 CHECKPOINT_KEY_NAMES)
from safetensors import safe_open
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from esd_lora.errors import EsdLoraError
from esd_lora.single_file import (ORIGINAL_PREFIXES, SingleFileExportError, original_family, save_single_file,
                                  to_original_state_dict)

CASES = ("sd1", "sd2", "sdxl", "sdxl_wide")
ENCODERS = ("text_encoder", "text_encoder_2")


def _pipeline_class(case: str):
    return StableDiffusionXLPipeline if case.startswith("sdxl") else StableDiffusionPipeline


@pytest.fixture(scope="module")
def folders(tiny_dirs, tmp_path_factory):
    """The tiny pipelines, plus an SDXL whose two encoders differ in width (768 / 1280 in the real model)."""
    folder = tmp_path_factory.mktemp("sdxl_wide")
    torch.manual_seed(1)
    tok = tiny_models.tokenizer(folder / "_tok")
    unet = UNet2DConditionModel(block_out_channels=(16, 32), layers_per_block=1, sample_size=8, norm_num_groups=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32 + 48,
                                attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 48)
    StableDiffusionXLPipeline(
        vae=tiny_models._vae(), text_encoder=CLIPTextModel(tiny_models._text_config(tok, 32)),
        text_encoder_2=CLIPTextModelWithProjection(tiny_models._text_config(tok, 48, projection_dim=48)),
        tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=tiny_models._scheduler("epsilon"),
    ).save_pretrained(folder, safe_serialization=True)
    return {**tiny_dirs, "sdxl_wide": folder}


@pytest.fixture
def no_network(monkeypatch):
    """Fail any attempt to open a network connection."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters()) | dict(module.named_buffers())


def _second_encoder(file, folder) -> CLIPTextModelWithProjection:
    """SDXL's second encoder read from ``file`` by diffusers' own OpenCLIP converter.

    ``from_single_file`` picks the converter by key *and width*: when both encoders are equally wide (only in tiny
    models: real SDXL has 768 / 1280) it loads ``conditioner.embedders.0`` into ``text_encoder_2`` and leaves its
    ``text_projection`` unset. The file is right; the routing cannot tell, so this test runs the converter directly.
    """
    model = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2"))
    converted = convert_open_clip_checkpoint(model, safetensors.torch.load_file(file),
                                             prefix="conditioner.embedders.1.model.")
    model.load_state_dict(converted, strict=True)
    return model.eval()


def _images(pipe) -> np.ndarray:
    """A 2-step generation, run on weights moved to fresh (64-byte aligned) memory.

    from_single_file leaves each weight where safetensors put it, at an offset in the file that is not 64-byte
    aligned, and CPU matmul kernels round differently on differently aligned memory (last-bit differences with
    bitwise equal weights). Equal weights on equally aligned memory must give identical images.
    """
    for module in pipe.components.values():
        for param in module.parameters() if isinstance(module, torch.nn.Module) else ():
            param.data = param.data.clone()
    pipe.set_progress_bar_config(disable=True)
    return pipe("a red star", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                output_type="np").images


@pytest.mark.parametrize("case", CASES)
def test_round_trip_through_from_single_file_is_exact(case, folders, tmp_path, no_network):
    cls, folder = _pipeline_class(case), folders[case]
    pipe = cls.from_pretrained(folder)
    file = save_single_file(pipe, tmp_path / "model.safetensors")
    assert file == tmp_path / "model.safetensors" and file.is_file()

    extra = {"text_encoder_2": _second_encoder(file, folder)} if case == "sdxl" else {}
    back = cls.from_single_file(str(file), config=str(folder), local_files_only=True, **extra)

    for name in ("unet", "vae", *ENCODERS):
        if getattr(pipe, name, None) is None:
            continue
        ours, theirs = _tensors(getattr(pipe, name)), _tensors(getattr(back, name))
        assert ours.keys() == theirs.keys(), name
        for key, value in ours.items():
            assert theirs[key].device.type != "meta", f"{name}.{key} was not in the file"
            assert torch.equal(value, theirs[key]), f"{name}.{key} differs"
    assert np.array_equal(_images(pipe), _images(back))


@pytest.mark.parametrize("case", CASES)
def test_keys_are_in_the_original_layout(case, folders):
    pipe = _pipeline_class(case).from_pretrained(folders[case])
    state = to_original_state_dict(pipe)
    family = original_family(pipe)
    assert family == case.removesuffix("_wide")
    assert all(k.startswith(ORIGINAL_PREFIXES) for k in state)
    assert state["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4
    assert "model.diffusion_model.output_blocks.1.1.conv.weight" in state  # upsampler of the attention-free block
    if family == "sd1":
        assert "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight" in state
    elif family == "sd2":
        hidden = pipe.text_encoder.config.hidden_size
        assert state["cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight"].shape == (3 * hidden, hidden)
        assert {"cond_stage_model.model.token_embedding.weight", "cond_stage_model.model.positional_embedding",
                "cond_stage_model.model.ln_final.weight"} <= state.keys()
        assert not any(".resblocks.2." in k or "text_projection" in k for k in state)  # exactly the 2 layers held
    else:
        projection = pipe.text_encoder_2.text_projection.weight
        assert torch.equal(state["conditioner.embedders.1.model.text_projection"], projection.T)
        assert "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight" in state
        assert "model.diffusion_model.label_emb.0.2.weight" in state


def test_mapping_follows_the_unet_and_vae_structure(tmp_path):
    """Three blocks, two layers each, two transformer layers, attention in the first and last block only."""
    torch.manual_seed(0)
    tok = tiny_models.tokenizer(tmp_path / "tok")
    unet = UNet2DConditionModel(block_out_channels=(8, 16, 16), layers_per_block=2, sample_size=8, norm_num_groups=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
                                transformer_layers_per_block=2, cross_attention_dim=32, attention_head_dim=4)
    vae = AutoencoderKL(block_out_channels=(8, 8, 16), layers_per_block=2, latent_channels=4, norm_num_groups=4,
                        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=CLIPTextModel(tiny_models._text_config(tok, 32)),
                                   tokenizer=tok, unet=unet, scheduler=tiny_models._scheduler("epsilon"),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    state = to_original_state_dict(pipe)
    assert {"model.diffusion_model.input_blocks.8.1.transformer_blocks.1.attn2.to_k.weight",
            "model.diffusion_model.output_blocks.2.2.conv.weight",  # upsampler after (resnet, attention)
            "model.diffusion_model.output_blocks.5.1.conv.weight"} <= state.keys()  # upsampler after a lone resnet
    for model, converted in ((unet, convert_ldm_unet_checkpoint(state, unet.config)),
                             (vae, convert_ldm_vae_checkpoint(state, vae.config))):
        expected = model.state_dict()
        assert converted.keys() == expected.keys()
        assert all(torch.equal(converted[k], v) for k, v in expected.items())


def test_dtype_and_metadata(folders, tmp_path):
    pipe = StableDiffusionPipeline.from_pretrained(folders["sd1"])
    file = save_single_file(pipe, tmp_path / "half.safetensors", dtype=torch.float16, metadata={"who": "esd-lora"})
    with safe_open(str(file), "pt") as f:
        assert f.metadata() == {"who": "esd-lora"}
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert pipe.unet.dtype == torch.float32  # the pipeline itself is left alone


@pytest.mark.parametrize("existing", [False, True])
def test_write_is_atomic(existing, folders, tmp_path, monkeypatch):
    pipe = StableDiffusionPipeline.from_pretrained(folders["sd1"])
    path = tmp_path / "model.safetensors"
    if existing:
        path.write_bytes(b"previous checkpoint")

    def broken(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_single_file(pipe, path)
    assert list(tmp_path.iterdir()) == ([path] if existing else [])
    assert not existing or path.read_bytes() == b"previous checkpoint"


def test_unsupported_pipeline_is_refused():
    ddpm = DDPMPipeline(unet=UNet2DModel(sample_size=8, block_out_channels=(8, 8), norm_num_groups=4,
                                         down_block_types=("DownBlock2D",) * 2, up_block_types=("UpBlock2D",) * 2),
                        scheduler=tiny_models._scheduler("epsilon"))
    with pytest.raises(SingleFileExportError, match="DDPMPipeline") as caught:
        to_original_state_dict(ddpm)
    assert isinstance(caught.value, EsdLoraError)


def test_pipeline_without_a_text_encoder_is_refused(folders):
    pipe = StableDiffusionXLPipeline.from_pretrained(folders["sdxl"])
    pipe.text_encoder = None  # as in the SDXL refiner
    with pytest.raises(SingleFileExportError, match="without its text_encoder"):
        to_original_state_dict(pipe)


def test_unfused_lora_is_refused(folders):
    from peft import LoraConfig

    pipe = StableDiffusionPipeline.from_pretrained(folders["sd1"])
    pipe.unet.add_adapter(LoraConfig(r=2, target_modules=["to_q"]))
    with pytest.raises(SingleFileExportError, match="fuse"):
        to_original_state_dict(pipe)


def _real_architecture(family: str, tok):
    """A pipeline with the real model's architecture, built on the meta device (shapes only, no memory)."""
    def clip(hidden: int, layers: int, cls=CLIPTextModel, **kwargs):
        return cls(CLIPTextConfig(vocab_size=len(tok), hidden_size=hidden, num_hidden_layers=layers,
                                  num_attention_heads=hidden // 64, intermediate_size=4 * hidden, bos_token_id=0,
                                  eos_token_id=1, pad_token_id=1, **kwargs))

    scheduler = tiny_models._scheduler("epsilon")
    with torch.device("meta"):
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        if family == "sdxl":
            unet = UNet2DConditionModel(
                block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                attention_head_dim=(5, 10, 20), cross_attention_dim=2048, use_linear_projection=True,
                addition_embed_type="text_time", addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816)
            return StableDiffusionXLPipeline(vae=vae, text_encoder=clip(768, 12),
                                             text_encoder_2=clip(1280, 32, CLIPTextModelWithProjection,
                                                                 projection_dim=1280),
                                             tokenizer=tok, tokenizer_2=tok, unet=unet, scheduler=scheduler)
        sd2 = family == "sd2"  # 2.x base: epsilon prediction, told apart by its 1024-wide OpenCLIP ViT-H
        unet = UNet2DConditionModel(cross_attention_dim=1024 if sd2 else 768, use_linear_projection=sd2,
                                    attention_head_dim=(5, 10, 20, 20) if sd2 else 8)
        return StableDiffusionPipeline(vae=vae, text_encoder=clip(1024, 23) if sd2 else clip(768, 12),
                                       tokenizer=tok, unet=unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)


@pytest.mark.parametrize("family, model_type", [("sd1", "v1"), ("sd2", "v2"), ("sdxl", "xl_base")])
def test_real_architectures_are_recognised_and_map_back(family, model_type, tmp_path):
    """diffusers tells the real models apart by key and shape alone; its converters give back every weight."""
    pipe = _real_architecture(family, tiny_models.tokenizer(tmp_path / "tok"))
    assert original_family(pipe) == family
    state = to_original_state_dict(pipe)
    assert infer_diffusers_model_type(state) == model_type
    text_kinds = {"sd1": ["clip"], "sd2": ["open_clip"], "sdxl": ["clip_sdxl", "open_clip_sdxl"]}[family]
    assert all(CHECKPOINT_KEY_NAMES[kind] in state for kind in (model_type, *text_kinds))
    open_clip = {"sd2": ("text_encoder", "cond_stage_model.model."),
                 "sdxl": ("text_encoder_2", "conditioner.embedders.1.model.")}
    encoders = [(getattr(pipe, open_clip[family][0]), open_clip[family][1])] if family in open_clip else []
    pairs = [(pipe.unet, convert_ldm_unet_checkpoint(state, pipe.unet.config)),
             (pipe.vae, convert_ldm_vae_checkpoint(state, pipe.vae.config)),
             *((model, convert_open_clip_checkpoint(model, state, prefix=prefix)) for model, prefix in encoders)]
    for model, converted in pairs:
        expected = {k.removeprefix("text_model."): v for k, v in model.state_dict().items()}
        converted = {k.removeprefix("text_model."): v for k, v in converted.items()}
        assert converted.keys() == expected.keys()
        assert all(converted[k].shape == v.shape for k, v in expected.items())
