"""Stored base rates: evaluate reads a base folder's measurement of itself instead of generating the base's images
again, only where the weights, scheduler, settings and concepts are those it was measured on."""

import importlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from esd_lora import BUNDLED_BASE
from esd_lora.base_rates import FILE, store_rates, stored_rates, weights_digest
from esd_lora.cli import main
from esd_lora.errors import NotAPipelineError
from esd_lora.bundled import world
from esd_lora.evaluate import GRID_SAMPLES, evaluate, evaluation_plan, judged_as
from esd_lora.families import load_pipeline

evaluate_module = importlib.import_module("esd_lora.evaluate")  # esd_lora.evaluate is the function
CONCEPTS = ["red", "star"]
SETTINGS = {"n": 5, "steps": 2, "guidance_scale": 5.0, "seed": 0}


@pytest.fixture
def stored(tiny_dirs, tmp_path):
    """A copy of the tiny sd1 pipeline folder that stores its own rates (n=5), set apart from what it draws."""
    folder = tmp_path / "base"
    shutil.copytree(tiny_dirs["sd1"], folder)
    pipe = load_pipeline(folder)
    measured = evaluate(pipe, concepts=CONCEPTS, n=5, steps=2)
    path = store_rates(pipe, measured)
    data = json.loads(path.read_text())
    data["measurements"][0]["rates"]["red"]["train"] = 0.123  # no rate of 5 images: it can only have been read
    path.write_text(json.dumps(data))
    return folder, pipe, measured


@pytest.fixture
def generated(monkeypatch):
    """How many images evaluate generates, per call of generate_images."""
    counts = []
    real = evaluate_module.generate_images

    def counting(pipe, prompts, *args, **kwargs):
        counts.append(len(prompts))
        return real(pipe, prompts, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "generate_images", counting)
    return counts


def test_stored_rates_replace_the_base_pass_and_leave_the_adapted_one_alone(stored, sd1_adapter, generated):
    folder, pipe, _ = stored
    report = evaluate(pipe, adapters=[str(sd1_adapter)], concepts=CONCEPTS, **{k: SETTINGS[k] for k in ("n", "steps")})
    assert report.rate("red", "base", "train") == 0.123
    assert sum(generated) == len(CONCEPTS) * min(GRID_SAMPLES, 5) + 2 * len(CONCEPTS) * 5  # grid row + adapted
    assert str(folder / FILE) in report.settings["base_rates"]
    assert report.table().splitlines()[-1] == f"base rates: {report.settings['base_rates']}; --fresh-base measures them"
    assert report.grid().size[1] > 0 and len(report.samples["red"]["base"]) == min(GRID_SAMPLES, 5)

    generated.clear()
    fresh = evaluate(pipe, adapters=[str(sd1_adapter)], concepts=CONCEPTS, n=5, steps=2, fresh_base=True)
    assert sum(generated) == 2 * 2 * len(CONCEPTS) * 5
    assert fresh.rate("red", "base", "train") != 0.123 and "base_rates" not in fresh.settings
    assert [r.adapted for r in fresh.rows] == [r.adapted for r in report.rows]  # the same adapted images
    for concept in CONCEPTS:  # the grid's base images: the first of each training split, from its seeds
        for grid, first in zip(report.samples[concept]["base"], fresh.samples[concept]["base"], strict=False):
            assert np.abs(np.asarray(grid, dtype=int) - np.asarray(first, dtype=int)).max() <= 2


@pytest.mark.parametrize("change", ["seed", "n", "concepts", "weights", "scheduler", "no adapters"])
def test_anything_the_measurement_was_not_made_on_is_measured_afresh(stored, sd1_adapter, generated, change):
    _, pipe, _ = stored
    kwargs = {"concepts": CONCEPTS, "n": 5, "steps": 2, "adapters": [str(sd1_adapter)]}
    if change in ("seed", "n"):
        kwargs[change] = 6
    elif change == "concepts":  # a part of them: its images are not those of the stored rows (seeds by place)
        kwargs["concepts"] = ["star"]
    elif change == "weights":
        with torch.no_grad():
            pipe.unet.conv_in.bias.add_(1e-6)
    elif change == "scheduler":
        pipe.scheduler.register_to_config(steps_offset=1 - pipe.scheduler.config.steps_offset)
    else:
        kwargs["adapters"] = []
    report = evaluate(pipe, **kwargs)
    assert report.rate("red", "base", "train") != 0.123 and "base_rates" not in report.settings
    assert sum(generated) == (2 if kwargs["adapters"] else 1) * 2 * len(kwargs["concepts"]) * kwargs["n"]


def test_a_pipeline_not_in_fp32_on_the_cpu_reads_no_stored_rates(stored):
    _, pipe, _ = stored
    assert stored_rates(pipe, SETTINGS, CONCEPTS) is not None
    pipe.vae.to(torch.bfloat16)
    assert stored_rates(pipe, SETTINGS, CONCEPTS) is None
    with pytest.raises(NotAPipelineError, match="measured in fp32 on the CPU"):
        store_rates(pipe, evaluate_module.Report(rows=[], settings=SETTINGS))


def test_storing_again_replaces_the_measurement_of_the_same_settings_and_keeps_the_others(stored):
    folder, pipe, measured = stored
    other = evaluate(pipe, concepts=["blue"], n=2, steps=2, seed=3)
    store_rates(pipe, other)
    store_rates(pipe, measured)  # n=5 again: the edited 0.123 is replaced by what was measured
    measurements = json.loads((folder / FILE).read_text())["measurements"]
    assert [(m["n"], m["seed"]) for m in measurements] == [(2, 3), (5, 0)]
    assert measurements[1]["rates"]["red"]["train"] == measured.rate("red", "base", "train")
    assert all(m["weights"] == weights_digest(pipe) and m["torch_threads"] == torch.get_num_threads()
               for m in measurements)


def test_a_report_with_adapters_or_a_pipeline_without_a_folder_stores_nothing(stored, sd1_adapter):
    folder, pipe, _ = stored
    with pytest.raises(ValueError, match="no base measurement"):
        store_rates(pipe, evaluate(pipe, adapters=[str(sd1_adapter)], concepts=["blue"], n=1, steps=2))
    pipe.register_to_config(_name_or_path=str(folder / "nowhere"))
    with pytest.raises(NotAPipelineError, match="not loaded from a local folder"):
        store_rates(pipe, evaluate(pipe, concepts=["blue"], n=1, steps=2))


def test_a_broken_rates_file_is_a_one_line_error(stored):
    folder, pipe, _ = stored
    (folder / FILE).write_text('{"measurements": {"n": 5}}')
    with pytest.raises(NotAPipelineError, match=f"{FILE} is not a valid base-rates file.*fix or delete it"):
        stored_rates(pipe, SETTINGS, CONCEPTS)


def test_cli_fresh_base_measures_the_base(stored, sd1_adapter, capsys):
    folder = stored[0]
    argv = ["evaluate", "--base", str(folder), "--adapter", str(sd1_adapter), "--n", "5", "--steps", "2", "--quiet"]
    for concept in CONCEPTS:
        argv += ["--concept", concept]
    assert main(argv) == 0
    assert "base rates: stored in" in capsys.readouterr().out
    assert main([*argv, "--fresh-base"]) == 0
    assert "stored" not in capsys.readouterr().out


def test_the_bundled_base_stores_rates_of_its_own_weights_that_a_fresh_measurement_gives():
    """The shipped base_rates.json is no stale or made-up table: its digest is the shipped weights', and dotted, the
    concept the base draws least surely, measures the same again, on the prompts and seeds it has in a whole
    evaluation (within an image per split: float sums differ with the thread count, and the judge's call on a
    blurred dot can turn on them)."""
    measurements = json.loads((Path(BUNDLED_BASE) / FILE).read_text())["measurements"]
    # evaluate's, the slow test's and the web app's defaults
    assert {(m["n"], m["seed"]) for m in measurements} >= {(32, 0), (32, 1), (8, 0)}
    pipe = load_pipeline("bundled", device="cpu")
    assert all(m["weights"] == weights_digest(pipe) for m in measurements)
    concepts = world.all_concepts()
    stored_dotted = stored_rates(pipe, {"n": 32, "steps": 25, "guidance_scale": 5.0, "seed": 0}, concepts)[0]["dotted"]
    for concept, split, prompts, seed in evaluation_plan(concepts, 32, 0):
        if concept == "dotted":
            images = evaluate_module.generate_images(pipe, prompts, seed, 25, 5.0, 128)
            assert np.mean(judged_as(images, "dotted")) == pytest.approx(stored_dotted[split], abs=1 / 32 + 1e-9)


@pytest.fixture
def other_judge(tmp_path):
    """Judge weights other than the bundled judge's (untrained): another world version's judge, say."""
    from esd_lora.bundled.judge import JudgeNet, save_weights

    path = tmp_path / "other-judge.safetensors"
    torch.manual_seed(0)
    save_weights(JudgeNet(), path)
    return path


def test_rates_are_read_only_under_the_judge_that_labelled_them(stored, other_judge):
    from esd_lora.base_rates import judge_digest
    from esd_lora.bundled.judge import WEIGHTS_PATH, weights_from

    folder, pipe, _ = stored
    with weights_from(other_judge):
        assert stored_rates(pipe, SETTINGS, CONCEPTS) is None  # the bundled judge's labels, not this one's
        report = evaluate(pipe, concepts=CONCEPTS, n=5, steps=2)
        assert "base_rates" not in report.settings
        store_rates(pipe, report)  # beside the bundled judge's measurement of the same settings
        rates, note = stored_rates(pipe, SETTINGS, CONCEPTS)
        assert rates == report.base_rates() and "settings and judge" in note
    assert stored_rates(pipe, SETTINGS, CONCEPTS)[0]["red"]["train"] == 0.123  # the bundled judge's, kept
    measurements = json.loads((folder / FILE).read_text())["measurements"]
    assert sorted(m["judge"] for m in measurements) == sorted([judge_digest(WEIGHTS_PATH), judge_digest(other_judge)])


def test_a_measurement_stored_before_judges_were_recorded_is_the_bundled_judges(stored, other_judge):
    from esd_lora.bundled.judge import weights_from

    folder, pipe, _ = stored
    data = json.loads((folder / FILE).read_text())
    del data["measurements"][0]["judge"]
    (folder / FILE).write_text(json.dumps(data))
    assert stored_rates(pipe, SETTINGS, CONCEPTS)[0]["red"]["train"] == 0.123
    with weights_from(other_judge):
        assert stored_rates(pipe, SETTINGS, CONCEPTS) is None
