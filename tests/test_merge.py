import json
import os

import pytest
import torch
from diffusers import DiffusionPipeline
from huggingface_hub import ModelCard
from safetensors import safe_open

import esd_lora
from esd_lora.errors import AdapterBaseMismatchError, AdapterNotFoundError, ConfigError, OutputExistsError
from esd_lora.families import family_of, load_pipeline
from esd_lora.merge import ERASURES_FILE, export_kohya, merge


@pytest.fixture(scope="module")
def family_adapters(tiny_dirs, tmp_path_factory):
    """Two adapters per family (esd-x on 'red', esd-u on 'star'), trained hard enough to change the output."""
    root = tmp_path_factory.mktemp("merge-adapters")
    made = {}
    for family, folder in tiny_dirs.items():
        made[family] = []
        for concept, method in (("red", "esd-x"), ("star", "esd-u")):
            out = root / f"{family}-{concept}.safetensors"
            esd_lora.erase(folder, concept, method=method, iterations=3, ddim_steps=3, lr=5e-2, alpha=2.0,
                           progress=False, out=out, device="cpu")
            made[family].append(out)
    return made


def _unet_output(pipe, prompt="a red star"):
    x = torch.randn(1, *family_of(pipe).latent_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return pipe.unet(x, 400, **family_of(pipe).encode([prompt]).unet_kwargs()).sample


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_merged_model_equals_the_stack(tiny_dirs, family_adapters, tmp_path, family):
    first, second = family_adapters[family]
    specs = [str(first), f"{second}:0.5"]
    pipe = load_pipeline(tiny_dirs[family], device="cpu")
    base = _unet_output(pipe)
    esd_lora.apply_adapters(pipe, specs)
    stacked = _unet_output(pipe)
    pipe.unload_lora_weights()

    out = merge(tiny_dirs[family], specs, tmp_path / "merged")
    merged = _unet_output(load_pipeline(out, device="cpu"))
    assert not torch.allclose(stacked, base, atol=1e-3)  # the erasures do change the model
    torch.testing.assert_close(merged, stacked, atol=1e-4, rtol=0)

    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert not [k for k in f.keys() if "lora" in k]
    erasures = json.loads((out / ERASURES_FILE).read_text())["erasures"]
    assert [(e["concepts"], e["method"], e["weight"]) for e in erasures] == [(["red"], "esd-x", 1.0),
                                                                            (["star"], "esd-u", 0.5)]
    card = ModelCard.load(out / "README.md")
    assert "esd-lora" in card.data.tags
    for e in erasures:
        assert e["sha256"] == esd_lora.adapter.file_sha256(first if e["concepts"] == ["red"] else second)
        assert e["sha256"] in card.text
    # stock diffusers loads the folder as a plain pipeline with no adapters
    stock = DiffusionPipeline.from_pretrained(out)
    assert not getattr(stock.unet, "peft_config", None)


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_single_file_from_merge_loads_in_stock_diffusers_and_equals_the_stack(tiny_dirs, family_adapters, tmp_path,
                                                                               family):
    from diffusers import StableDiffusionPipeline

    specs = [str(family_adapters[family][0]), f"{family_adapters[family][1]}:0.5"]
    pipe = load_pipeline(tiny_dirs[family], device="cpu")
    esd_lora.apply_adapters(pipe, specs)
    stacked = _unet_output(pipe)
    out = merge(tiny_dirs[family], specs, tmp_path / "merged", single_file=tmp_path / "merged.safetensors")
    single = StableDiffusionPipeline.from_single_file(str(tmp_path / "merged.safetensors"), config=str(out),
                                                      local_files_only=True)
    torch.testing.assert_close(_unet_output(single), stacked, atol=1e-4, rtol=0)
    with safe_open(str(tmp_path / "merged.safetensors"), "pt") as f:
        assert json.loads(f.metadata()["esd_lora_erasures"])[1]["weight"] == 0.5


def test_merge_saves_the_requested_dtype(tiny_dirs, family_adapters, tmp_path):
    out = merge(tiny_dirs["sd1"], [str(family_adapters["sd1"][0])], tmp_path / "half", dtype="fp16")
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}


def test_merge_refuses_an_existing_folder_and_overwrites_on_request(tiny_dirs, family_adapters, tmp_path):
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match="--overwrite"):
        merge(tiny_dirs["sd1"], [str(family_adapters["sd1"][0])], out)
    assert (out / "keep.txt").read_text() == "mine"
    merge(tiny_dirs["sd1"], [str(family_adapters["sd1"][0])], out, overwrite=True)
    assert (out / "model_index.json").is_file() and not (out / "keep.txt").exists()


def test_a_crash_mid_write_leaves_no_folder(tiny_dirs, family_adapters, tmp_path, monkeypatch):
    def broken_card(**kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(esd_lora.merge, "merged_card", broken_card)
    with pytest.raises(OSError, match="disk full"):
        merge(tiny_dirs["sd1"], [str(family_adapters["sd1"][0])], tmp_path / "merged")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("make_specs, error, match", [
    (lambda a, tmp: [], ConfigError, "at least one --adapter"),
    (lambda a, tmp: [str(tmp / "missing.safetensors")], AdapterNotFoundError, "does not exist"),
    (lambda a, tmp: [f"{a['sd1'][0]}:heavy"], ConfigError, "not a number"),
    (lambda a, tmp: [str(a["sd1"][0]), f"{a['sd1'][0]}:0.5"], ConfigError, "listed twice"),
    (lambda a, tmp: [str(a["sd1"][0]), str(a["sd2"][0])], AdapterBaseMismatchError, "mixes bases"),
])
def test_merge_refusals(tiny_dirs, family_adapters, tmp_path, make_specs, error, match):
    with pytest.raises(error, match=match):
        merge(tiny_dirs["sd1"], make_specs(family_adapters, tmp_path), tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


def test_merge_refuses_a_loaded_pipeline(sd1_pipe, family_adapters, tmp_path):
    with pytest.raises(ConfigError, match="not a loaded pipeline"):
        merge(sd1_pipe, [str(family_adapters["sd1"][0])], tmp_path / "merged")


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("which", [0, 1], ids=["esd-x", "esd-u"])
def test_kohya_export_loads_back_in_stock_diffusers_to_the_same_output(tiny_dirs, family_adapters, tmp_path,
                                                                        family, which):
    adapter = family_adapters[family][which]
    pipe = load_pipeline(tiny_dirs[family], device="cpu")
    esd_lora.apply_adapters(pipe, [str(adapter)])
    ours = _unet_output(pipe)
    pipe.unload_lora_weights()

    out = export_kohya(adapter, tmp_path / "kohya.safetensors")
    with safe_open(str(out), "pt") as f:
        keys = list(f.keys())
        alphas = {f.get_tensor(k).item() for k in keys if k.endswith(".alpha")}
    assert all(k.startswith("lora_unet_") for k in keys)
    assert alphas == {2.0}  # the true alpha, not the rank (4)
    pipe.load_lora_weights(str(out))  # stock diffusers, kohya layout
    torch.testing.assert_close(_unet_output(pipe), ours, atol=1e-5, rtol=0)


def test_kohya_export_refuses_an_existing_file(family_adapters, tmp_path):
    out = tmp_path / "k.safetensors"
    out.write_bytes(b"x")
    with pytest.raises(OutputExistsError):
        export_kohya(family_adapters["sd1"][0], out)
    assert out.read_bytes() == b"x"
