import json

import pytest
import torch

from esd_lora.errors import BaseModelNotFoundError, NotAPipelineError, UnsupportedPipelineError
from esd_lora.families import Conditioning, family_of, load_pipeline


@pytest.mark.parametrize("family, label, prediction", [
    ("sd1", "sd1", "epsilon"), ("sd2", "sd1", "v_prediction"), ("sdxl", "sdxl", "epsilon")])
def test_families_load_and_encode(tiny_dirs, family, label, prediction):
    pipe = load_pipeline(tiny_dirs[family], device="cpu")
    fam = family_of(pipe)
    assert (fam.label, fam.prediction_type, fam.latent_shape) == (label, prediction, (4, 8, 8))
    cond = fam.encode(["", "red", "blue"])
    assert cond.hidden.shape[:2] == (3, 77)
    kwargs = cond[1].unet_kwargs()
    if family == "sdxl":
        assert cond.text_embeds.shape == (3, 32) and cond.time_ids.shape == (3, 6)
        assert cond.time_ids[0].tolist() == [16, 16, 0, 0, 16, 16]
        # force_zeros_for_empty_prompt: the empty prompt is the pipeline's own all-zeros negative
        assert torch.count_nonzero(cond.hidden[0]) == 0 and torch.count_nonzero(cond.text_embeds[0]) == 0
        assert set(kwargs["added_cond_kwargs"]) == {"text_embeds", "time_ids"}
    else:
        assert cond.text_embeds is None and set(kwargs) == {"encoder_hidden_states"}
    out = pipe.unet(torch.zeros(1, 4, 8, 8), 10, **kwargs).sample
    assert out.shape == (1, 4, 8, 8)
    assert Conditioning.cat([cond[0], cond[2]]).hidden.shape[0] == 2


def test_missing_bundled_base_says_how_to_build_it(monkeypatch, tmp_path):
    monkeypatch.setattr("esd_lora.families.BUNDLED_BASE", str(tmp_path / "absent"))
    with pytest.raises(BaseModelNotFoundError, match="build_bundled_base.py"):
        load_pipeline("bundled")


def test_missing_base(tmp_path):
    with pytest.raises(BaseModelNotFoundError, match="does not exist"):
        load_pipeline(tmp_path / "nothing-here")


@pytest.mark.parametrize("make", ["empty_dir", "file", "bad_index"])
def test_not_a_pipeline(tmp_path, make):
    target = tmp_path / "base"
    if make == "file":
        target.write_text("hello")
    else:
        target.mkdir()
        if make == "bad_index":
            (target / "model_index.json").write_text("{not json")
    with pytest.raises(NotAPipelineError, match="model_index.json"):
        load_pipeline(target)


def test_pipeline_without_safetensors_weights(tiny_dirs, tmp_path):
    target = tmp_path / "base"
    target.mkdir()
    (target / "model_index.json").write_text((tiny_dirs["sd1"] / "model_index.json").read_text())
    with pytest.raises(NotAPipelineError, match="safetensors"):
        load_pipeline(target)


def test_unsupported_pipeline_class(tmp_path):
    target = tmp_path / "base"
    target.mkdir()
    (target / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyPipeline"}))
    with pytest.raises(UnsupportedPipelineError, match="KandinskyPipeline.*StableDiffusionPipeline"):
        load_pipeline(target)


def test_unsupported_loaded_pipeline():
    with pytest.raises(UnsupportedPipelineError, match="object"):
        family_of(object())


def test_unreachable_hub_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(BaseModelNotFoundError, match="Hub"):
        load_pipeline("no-such-user/no-such-model-esd-lora-test")
