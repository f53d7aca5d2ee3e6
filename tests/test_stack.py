import numpy as np
import pytest
import torch

import esd_lora
from esd_lora.errors import AdapterBaseMismatchError, AdapterShapeMismatchError, ConfigError
from esd_lora.families import load_pipeline
from esd_lora.stack import AdapterSpec, parse_adapter_spec


@pytest.mark.parametrize("text, expected", [
    ("a.safetensors", AdapterSpec("a.safetensors", 1.0)),
    ("a.safetensors:0.5", AdapterSpec("a.safetensors", 0.5)),
    ("dir/a.safetensors:-1", AdapterSpec("dir/a.safetensors", -1.0)),
])
def test_parse_adapter_spec(text, expected):
    assert parse_adapter_spec(text) == expected


@pytest.mark.parametrize("text, match", [("a.safetensors:abc", "not a number"), ("a.safetensors:inf", "finite"),
                                         ("  ", "empty adapter")])
def test_parse_adapter_spec_refuses(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_adapter_spec(text)


def test_existing_path_with_colon_is_kept_whole(tmp_path):
    path = tmp_path / "weird:name.safetensors"
    path.write_bytes(b"")
    assert parse_adapter_spec(str(path)) == AdapterSpec(str(path), 1.0)


def test_weights_scale_the_adapter_exactly(tiny_dirs, sd1_adapter):
    pipe = load_pipeline(tiny_dirs["sd1"])
    x, t = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)), 300
    cond = esd_lora.families.family_of(pipe).encode(["red"]).unet_kwargs()
    with torch.no_grad():
        base = pipe.unet(x, t, **cond).sample
        outputs = {}
        for weight in (0.0, 0.5, 1.0):
            esd_lora.apply_adapters(pipe, [AdapterSpec(str(sd1_adapter), weight)])
            outputs[weight] = pipe.unet(x, t, **cond).sample
            pipe.unload_lora_weights()
    assert torch.equal(outputs[0.0], base)
    assert not torch.allclose(outputs[1.0], base)
    assert not torch.allclose(outputs[0.5], outputs[1.0])


def test_adapter_for_another_base_is_refused_unless_forced(tiny_dirs, sd1_adapter):
    sd2 = load_pipeline(tiny_dirs["sd2"])  # same module shapes, other weights
    with pytest.raises(AdapterBaseMismatchError, match=f"trained on {tiny_dirs['sd1']}.*--force"):
        esd_lora.apply_adapters(sd2, [str(sd1_adapter)])
    assert not getattr(sd2.unet, "peft_config", None)  # nothing was loaded
    esd_lora.apply_adapters(sd2, [str(sd1_adapter)], force=True)
    assert sd2.unet.peft_config


def test_adapter_for_another_architecture_is_refused_even_forced(tiny_dirs, sd1_adapter):
    sdxl = load_pipeline(tiny_dirs["sdxl"])
    with pytest.raises(AdapterShapeMismatchError, match="does not fit"):
        esd_lora.apply_adapters(sdxl, [str(sd1_adapter)], force=True)


def test_generate_same_seeds_base_and_adapted(tiny_dirs, sd1_adapter):
    pipe = load_pipeline(tiny_dirs["sd1"])
    comparison = esd_lora.generate(pipe, "red", adapters=[f"{sd1_adapter}:1.0"], num_images=2, steps=2)
    plain = esd_lora.generate(pipe, "red", num_images=2, steps=2)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(comparison.base, plain.base))
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(comparison.base, comparison.erased))
    assert not getattr(pipe.unet, "peft_config", None)  # unloaded afterwards
    assert comparison.grid().size == (2 * 128, 18 + 2 * (128 + 18))
    assert plain.label == "" and plain.grid().size == (2 * 128, 18 + 128 + 18)  # no adapters: one row, the base
