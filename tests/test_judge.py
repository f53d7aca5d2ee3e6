"""Tests for the bundled judge and the bundled base pipeline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from esd_lora.bundled import world
from esd_lora.bundled.judge import WEIGHTS_PATH, accuracy, judge

BASE_DIR = Path(world.__file__).with_name("base")
JUDGE_TEST_SEED = 31_337  # used nowhere else: fresh renders


def test_judge_weights_are_small() -> None:
    assert WEIGHTS_PATH.exists()
    assert WEIGHTS_PATH.stat().st_size < 1_000_000


def test_judge_accuracy_per_dimension_on_fresh_renders() -> None:
    acc = accuracy(400, seed=JUDGE_TEST_SEED)
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
    """The shipped judge's data set is the current world's; ``versions`` splits it over several, in equal parts."""
    from esd_lora.bundled import judge as judge_module

    calls = []
    render = world.render_dataset

    def recording(n, seed, version=world.WORLD_VERSION):
        calls.append((n, version))
        return render(n, seed, version=version)

    monkeypatch.setattr(world, "render_dataset", recording)
    judge_module.train_judge(n_images=8, steps=1, batch_size=4)
    assert calls == [(8, world.WORLD_VERSION)]
    calls.clear()
    net = judge_module.train_judge(n_images=8, steps=1, batch_size=4, versions=world.VERSIONS)
    assert calls == [(8 // len(world.VERSIONS), v) for v in world.VERSIONS]
    assert not net.training
