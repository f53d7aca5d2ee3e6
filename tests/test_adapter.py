import json

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import esd_lora
from esd_lora.adapter import base_fingerprint, load_adapter
from esd_lora.errors import (AdapterNotFoundError, CorruptAdapterError, NotAnEsdAdapterError, OutputExistsError,
                             OutputNotWritableError)
from esd_lora.families import load_pipeline


def _images(pipe, prompt="red"):
    out = pipe(prompt, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    return out.images


def test_metadata_round_trip(sd1_adapter, tiny_dirs):
    adapter = load_adapter(sd1_adapter)
    meta = adapter.metadata
    assert meta.config.concepts == ["red"] and meta.config.method == "esd-x"
    assert (meta.config.rank, meta.config.alpha, meta.config.lr, meta.config.iterations) == (4, 2.0, 5e-2, 4)
    assert meta.base_model == str(tiny_dirs["sd1"])
    assert meta.base_fingerprint == base_fingerprint(load_pipeline(tiny_dirs["sd1"]).unet)
    assert meta.esd_lora_version == esd_lora.__version__ and meta.family == "sd1"
    assert meta.wall_time_s > 0 and np.isfinite(meta.final_loss) and meta.created
    with safe_open(str(sd1_adapter), "pt") as f:
        header = f.metadata()
    assert json.loads(header["esd_lora"]) == meta.to_dict()
    lora = json.loads(header["lora_adapter_metadata"])
    assert (lora["unet.r"], lora["unet.lora_alpha"]) == (4, 2.0)
    assert all(k.startswith("unet.") and (".lora_A." in k or ".lora_B." in k) for k in adapter.state_dict)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_stock_diffusers_loading_matches_ours_and_differs_from_base(tiny_dirs, sd1_adapter, tmp_path, family):
    adapter = sd1_adapter
    if family != "sd1":
        adapter = tmp_path / f"{family}.safetensors"
        esd_lora.erase(tiny_dirs[family], "red", iterations=2, ddim_steps=3, lr=5e-2, alpha=2.0, progress=False,
                       out=adapter)
    pipe = load_pipeline(tiny_dirs[family], device="cpu")
    base = _images(pipe)
    pipe.load_lora_weights(str(adapter))  # stock diffusers, reads alpha from the header
    stock = _images(pipe)
    pipe.unload_lora_weights()
    esd_lora.apply_adapters(pipe, [str(adapter)])
    ours = _images(pipe)
    assert np.array_equal(stock, ours)
    assert np.abs(stock - base).max() > 1e-3


def test_alpha_from_header_is_honoured(tiny_dirs, sd1_adapter, tmp_path):
    """Without the header diffusers assumes alpha = rank; with it, the scale is alpha / rank = 0.5."""
    pipe = load_pipeline(tiny_dirs["sd1"], device="cpu")
    pipe.load_lora_weights(str(sd1_adapter), adapter_name="a")
    layer = pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q
    assert layer.scaling["a"] == pytest.approx(0.5)
    with safe_open(str(sd1_adapter), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_file(tensors, str(tmp_path / "bare.safetensors"))
    pipe.load_lora_weights(str(tmp_path / "bare.safetensors"), adapter_name="b")
    assert layer.scaling["b"] == pytest.approx(1.0)


def test_fingerprint_is_dtype_stable_and_model_specific(tiny_dirs):
    fp32 = load_pipeline(tiny_dirs["sd1"], dtype="fp32").unet
    fp16 = load_pipeline(tiny_dirs["sd1"], dtype="fp16").unet
    assert base_fingerprint(fp32) == base_fingerprint(fp16)
    with torch.no_grad():
        fp32.conv_in.weight[0, 0, 0, 0] += 0.5
    assert base_fingerprint(fp32) != base_fingerprint(fp16)
    assert base_fingerprint(load_pipeline(tiny_dirs["sd2"]).unet) != base_fingerprint(fp16)


def test_missing_file(tmp_path):
    with pytest.raises(AdapterNotFoundError, match="does not exist"):
        load_adapter(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file(sd1_adapter, tmp_path, damage):
    data = sd1_adapter.read_bytes()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00" * 64 + data[64:],
                     "empty": b""}[damage])
    with pytest.raises(CorruptAdapterError, match="truncated"):
        load_adapter(bad)


def test_not_an_esd_adapter(tmp_path):
    other = tmp_path / "other.safetensors"
    save_file({"unet.x.lora_A.weight": torch.zeros(2, 2)}, str(other))
    with pytest.raises(NotAnEsdAdapterError, match="not an esd-lora adapter"):
        load_adapter(other)


def test_save_refuses_existing_and_unwritable(sd1_adapter, tmp_path):
    adapter = load_adapter(sd1_adapter)
    target = tmp_path / "a.safetensors"
    adapter.save(target)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        adapter.save(target)
    adapter.save(target, overwrite=True)
    with pytest.raises(OutputNotWritableError, match="does not exist"):
        adapter.save(tmp_path / "missing" / "a.safetensors")


def test_crash_mid_write_leaves_no_file(sd1_adapter, tmp_path, monkeypatch):
    adapter = load_adapter(sd1_adapter)

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr("esd_lora.adapter.save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        adapter.save(tmp_path / "a.safetensors")
    assert list(tmp_path.iterdir()) == []
