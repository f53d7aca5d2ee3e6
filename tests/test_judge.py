"""Tests for the bundled judge and the bundled base pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import save_file

from esd_lora.bundled import world
from esd_lora.bundled.judge import WEIGHTS_PATH, accuracy, judge

BASE_DIR = Path(world.__file__).with_name("base")
JUDGE_TEST_SEED = 31_337  # used nowhere else: fresh renders


def test_judge_weights_are_small() -> None:
    assert WEIGHTS_PATH.exists()
    assert WEIGHTS_PATH.stat().st_size < 1_000_000


@pytest.mark.parametrize(
    "version", [v for v in world.VERSIONS if (world.PATTERN_GEOMETRY[v].images_of or v) == world.WORLD_VERSION]
)
def test_judge_accuracy_per_dimension_on_fresh_renders(version: int) -> None:
    """On the current world and on every version that draws only its images (7: version 1 anchored)."""
    acc = accuracy(400, seed=JUDGE_TEST_SEED, version=version)
    for dim in world.DIMENSIONS:
        assert acc[dim] >= 0.98, f"judge accuracy on {dim}: {acc[dim]:.3f}"


def test_judge_accepts_pil_and_arrays_consistently() -> None:
    images, attrs = world.render_dataset(8, seed=JUDGE_TEST_SEED + 1)
    from_array = judge(images)
    from_pil = judge([Image.fromarray(x) for x in images])
    assert from_array == from_pil
    assert len(from_array) == 8
    assert set(from_array[0]) == {"shape", "colour", "pattern"}
    assert all(lab[d] in world.CONCEPTS[d] for lab in from_array for d in world.DIMENSIONS)


def test_judge_min_confidence_gives_none() -> None:
    images, _ = world.render_dataset(2, seed=JUDGE_TEST_SEED + 2)
    labels = judge(images, min_confidence=1.01)
    assert all(v is None for lab in labels for v in lab.values())


def test_judge_handles_larger_images() -> None:
    img = world.render("star", "green", "checkered", np.random.default_rng(JUDGE_TEST_SEED + 3))
    big = img.resize((64, 64))
    assert judge([big])[0]["colour"] == "green"


def test_bundled_pipeline_loads_and_generates() -> None:
    """The bundled base ships with the package and loads with stock diffusers."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(BASE_DIR))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.tokenizer.model_max_length == 77
    out = pipe(
        ["a red star"],
        height=32,
        width=32,
        num_inference_steps=4,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(0),
        output_type="pil",
    ).images
    assert out[0].size == (32, 32)


def test_judge_trains_on_the_world_versions_asked_for(monkeypatch) -> None:
    """The shipped judge's data set is the current world's, drawn from the judge's seed; ``versions`` splits it
    over several, in equal parts (the first from the seed itself)."""
    from esd_lora.bundled import judge as judge_module

    calls = []
    render = world.render_dataset

    def recording(n, seed, version=world.WORLD_VERSION):
        calls.append((n, seed, version))
        return render(n, seed, version=version)

    monkeypatch.setattr(world, "render_dataset", recording)
    judge_module.train_judge(n_images=8, steps=1, batch_size=4)
    assert calls == [(8, judge_module.TRAIN_SEED, world.WORLD_VERSION)]
    calls.clear()
    net = judge_module.train_judge(n_images=8, steps=1, batch_size=4, versions=world.VERSIONS)
    assert calls == [(8 // len(world.VERSIONS), judge_module.TRAIN_SEED + i, v) for i, v in enumerate(world.VERSIONS)]
    assert not net.training


def _blind_judge(path) -> None:
    """Save a judge whose pattern head always says "checkered" (and is otherwise the bundled one)."""
    from esd_lora.bundled.judge import load_judge

    state = {k: v.clone() for k, v in load_judge().state_dict().items()}
    state["heads.pattern.weight"].zero_()
    state["heads.pattern.bias"].copy_(torch.tensor([0.0, 0.0, 0.0, 9.0]))
    save_file(state, str(path))


def test_weights_from_judges_with_other_weights_inside_the_block(tmp_path) -> None:
    from esd_lora.bundled.judge import weights_from

    images, attrs = world.render_dataset(12, seed=5)
    _blind_judge(tmp_path / "blind.safetensors")
    with weights_from(tmp_path / "blind.safetensors"):
        assert {lab["pattern"] for lab in judge(images)} == {"checkered"}
        assert [lab["colour"] for lab in judge(images)] == [a[1] for a in attrs]
    assert [lab["pattern"] for lab in judge(images)] == [a[2] for a in attrs]  # the bundled judge again
    (tmp_path / "not-a-judge.safetensors").write_text("hello")
    with pytest.raises(SafetensorError):
        with weights_from(tmp_path / "not-a-judge.safetensors"):
            pass
    assert [lab["pattern"] for lab in judge(images)] == [a[2] for a in attrs]


def test_judge_command_trains_the_version_asked_for_into_out(tmp_path, monkeypatch, capsys) -> None:
    from esd_lora.bundled import judge as judge_module

    trained = []

    def quick(versions):
        trained.append(versions)
        net = judge_module.JudgeNet()
        net.load_state_dict(judge_module.load_judge().state_dict())
        return net

    monkeypatch.setattr(judge_module, "train_judge", quick)
    monkeypatch.setattr(judge_module, "accuracy", lambda n, seed, version: {"pattern": float(version)})
    before = WEIGHTS_PATH.read_bytes()
    out = tmp_path / "judge-v2.safetensors"
    judge_module.main(["--world-version", "2", "--out", str(out)])
    assert trained == [(2,)] and out.is_file() and not list(tmp_path.glob("*.tmp"))
    assert WEIGHTS_PATH.read_bytes() == before
    printed = capsys.readouterr().out
    assert f"saved {out}" in printed and "world version 2: {'pattern': 2.0}" in printed
    with pytest.raises(SystemExit) as exit_info:
        judge_module.main(["--out", str(tmp_path / "missing" / "judge.safetensors")])
    assert exit_info.value.code == 2 and "its folder does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        judge_module.main(["--world-version", str(max(world.VERSIONS) + 1), "--out", str(out)])
    assert trained == [(2,)]
