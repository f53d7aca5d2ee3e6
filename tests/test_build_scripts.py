"""The bundled base's build and check scripts: their helpers and bad input (a build takes an hour)."""

import pytest
import torch


@pytest.fixture(scope="module")
def build(load_script):
    return load_script("scripts/build_bundled_base.py")


def test_oversampled_images_are_drawn_in_proportion_to_their_weights(build):
    attrs = [("star", "red", "dotted"), ("star", "blue", "solid"), ("circle", "red", "solid")]
    weights = build.sampling_weights(attrs, build.parse_oversample(["dotted=2", "star=1.5"]))
    assert weights.tolist() == [3.0, 1.5, 1.0]
    draws = torch.multinomial(weights, 55_000, replacement=True, generator=torch.Generator().manual_seed(0))
    shares = torch.bincount(draws, minlength=3) / len(draws)
    assert shares.tolist() == pytest.approx([3 / 5.5, 1.5 / 5.5, 1 / 5.5], abs=0.01)
    assert build.sampling_weights(attrs, {}) is None  # no --oversample: uniform draws, as before


@pytest.mark.parametrize("item, message", [
    ("blue", "CONCEPT=WEIGHT with a concept of circle"),
    ("purple=2", "CONCEPT=WEIGHT"),
    ("dotted=x", "must be a number"),
    ("dotted=0", "positive number"),
    ("dotted=inf", "positive number"),
])
def test_bad_oversample_is_a_one_line_error(build, item, message):
    with pytest.raises(SystemExit, match=message):
        build.parse_oversample([item])


def test_model_card_names_each_stage_world_version_and_oversampling(load_script, tmp_path):
    """The card says which world, device and batch each build stage used (older build_info.json files name no
    world version, device or batch: version 1, 2 CPU cores, batch 64)."""
    import argparse
    import json
    import shutil

    import esd_lora

    check = load_script("scripts/check_bundled_base.py")
    model = tmp_path / "base"
    shutil.copytree(esd_lora.BUNDLED_BASE, model)
    first = {"seed": 0, "lr": 6e-4, "vae_steps": 2000, "text_steps": 200, "minutes": 50.0, "unet_steps": 3130}
    resumed = {"seed": 3, "lr": 4e-4, "resumed_from": "/tmp/b", "world_version": 2, "oversample": {"dotted": 1.5},
               "judge_accuracy_on_vae_reconstructions": {"pattern": 0.97}, "judge": "judge-v2.safetensors",
               "minutes": 40.0, "unet_steps": 2400, "batch_size": 64, "device": "cpu", "threads": 2}
    on_gpu = {"seed": 4, "lr": 3e-4, "resumed_from": "/tmp/c", "world_version": 2, "batch_size": 256,
              "device": "cuda (NVIDIA H200)", "threads": 3, "minutes": 3.4, "unet_steps": 2821}
    info = {"build_minutes": 93.4, "unet_steps": 8351, "stages": [first, resumed, on_gpu]}
    (model / "build_info.json").write_text(json.dumps(info))
    settings = json.loads((model / "esd_lora.json").read_text())
    settings.pop("by_concept", None)
    (model / "esd_lora.json").write_text(json.dumps(settings))
    scores = {"red": {"train": 1.0, "held-out": 0.5}}
    check.write_card(model, scores, argparse.Namespace(n=32, steps=25, guidance=5.0, seed=1))
    card = (model / "README.md").read_text()
    stages = [line for line in card.splitlines() if line.startswith("- ") and "UNet" in line]
    assert len(stages) == 3
    assert "from scratch" in stages[0] and "world version 1," in stages[0] and "judge accuracy" not in stages[0]
    assert "UNet 3130 steps, 50.0 min" in stages[0]  # a stage from before devices were recorded: 2 CPU cores
    assert "UNet 2400 steps of batch 64, 40.0 min on cpu (2 threads)" in stages[1]
    assert "UNet 2821 steps of batch 256, 3.4 min on cuda (NVIDIA H200)" in stages[2]
    assert "`--resume`" in stages[1] and "world version 2 (judge `judge-v2.safetensors` accuracy" in stages[1]
    assert "`--oversample` {'dotted': 1.5}" in stages[1]
    assert "| red | 100% | 50% |" in card
    assert "`python scripts/check_bundled_base.py --n 32 --seed\n1`" in card
    assert "by_concept" not in card  # an esd_lora.json without such groups
    settings["by_concept"] = [{"concepts": ["star", "pentagram"], "erase": {"eta": 1.0}}]
    (model / "esd_lora.json").write_text(json.dumps(settings))
    check.write_card(model, scores, argparse.Namespace(n=32, steps=25, guidance=5.0, seed=1))
    assert "{'eta': 1.0} for star, pentagram." in (model / "README.md").read_text()


@pytest.mark.parametrize("script", ["scripts/build_bundled_base.py", "scripts/check_bundled_base.py"])
def test_judge_file_that_is_not_there_is_a_one_line_error(load_script, monkeypatch, capsys, tmp_path, script):
    module = load_script(script)
    monkeypatch.setattr("sys.argv", [script, "--judge", str(tmp_path / "judge-v3.safetensors")])
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args() if hasattr(module, "parse_args") else module.main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "judge-v3.safetensors: no such file; train one with python -m esd_lora.bundled.judge" in err


@pytest.mark.parametrize("args, message", [
    (["--judge", "JUDGE", "--card"], "--card keeps the bundled judge's figures; leave out --judge"),
    (["--store-rates", "--device", "cuda"], "--store-rates: stored base rates are measured on the CPU"),
])
def test_check_script_writes_no_card_from_another_judge_nor_rates_from_another_device(
        load_script, monkeypatch, capsys, tmp_path, args, message):
    from esd_lora.bundled.judge import WEIGHTS_PATH

    check = load_script("scripts/check_bundled_base.py")
    monkeypatch.setattr(check, "evaluate", lambda *a, **k: pytest.fail("measured before refusing"))
    args = [str(WEIGHTS_PATH) if a == "JUDGE" else a for a in args]
    monkeypatch.setattr("sys.argv", ["check", *args, "--model", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        check.main()
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("script", ["scripts/build_bundled_base.py", "scripts/check_bundled_base.py"])
def test_judge_file_that_holds_no_judge_is_a_one_line_error(load_script, monkeypatch, capsys, tmp_path, script):
    """Refused before any work (a build would otherwise fail half an hour in, at its VAE measurement)."""
    module = load_script(script)
    (tmp_path / "notes.safetensors").write_text("not weights")
    monkeypatch.setattr("sys.argv", [script, "--judge", str(tmp_path / "notes.safetensors")])
    with pytest.raises(SystemExit) as exit_info:
        module.parse_args() if hasattr(module, "parse_args") else module.main()
    assert exit_info.value.code == 2
    assert "notes.safetensors: not the weights of a bundled judge (" in capsys.readouterr().err


def test_a_16x16_latent_build_assembles_a_pipeline_of_32x32_images(build, tmp_path):
    """--latent-size 16: a 16x16x4 autoencoder and a UNet with a 16x16 level in front, saved as a stock pipeline
    that draws 32x32 images like the shipped base (diffusers derives the image size from the two configs)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    import esd_lora

    tokenizer = CLIPTokenizer.from_pretrained(esd_lora.BUNDLED_BASE, subfolder="tokenizer")
    torch.manual_seed(0)
    vae, unet = build.make_vae(16), build.make_unet(128, 16)
    assert vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean.shape == (1, 4, 16, 16)
    assert unet.config.down_block_types == ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                            "DownBlock2D")
    build.save_pipeline(tmp_path / "base", vae, unet, build.make_text_encoder(tokenizer), tokenizer)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "base", safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    image = pipe("a red circle", num_inference_steps=2, output_type="np").images[0]
    assert image.shape == (32, 32, 3)
    assert build.make_unet(128).config.sample_size == 8  # the default stays the shipped base's architecture


def test_latent_size_with_resume_is_a_one_line_error(build, monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["build", "--resume", "esd_lora/bundled/base", "--latent-size", "16"])
    with pytest.raises(SystemExit) as exit_info:
        build.parse_args()
    assert exit_info.value.code == 2
    assert "--latent-size is for a build from scratch" in capsys.readouterr().err


def test_an_existing_out_folder_is_refused_before_the_build_starts(build, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr("sys.argv", ["build", "--out", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_info:
        build.parse_args()
    assert exit_info.value.code == 2
    assert f"{tmp_path} already exists: choose another --out or pass --overwrite" in capsys.readouterr().err
    monkeypatch.setattr("sys.argv", ["build", "--out", str(tmp_path), "--overwrite"])
    assert build.parse_args().overwrite


def _tiny_build(build):
    from transformers import CLIPTokenizer

    import esd_lora

    tokenizer = CLIPTokenizer.from_pretrained(esd_lora.BUNDLED_BASE, subfolder="tokenizer")
    torch.manual_seed(0)
    return build.make_vae(8), build.make_unet(128), build.make_text_encoder(tokenizer), tokenizer


def test_a_build_replaces_its_out_folder_only_once_it_is_complete(build, monkeypatch, tmp_path):
    import json
    from pathlib import Path

    from diffusers import StableDiffusionPipeline

    import esd_lora

    tokenizer_files = Path(esd_lora.BUNDLED_BASE) / "tokenizer"
    out = tmp_path / "base"
    out.mkdir()
    (out / "old.txt").write_text("the earlier build")
    models = _tiny_build(build)
    real_save = build.save_pipeline

    def save_then_fail(folder, *args):
        real_save(folder, *args)
        raise KeyboardInterrupt  # interrupted after the weights, before build_info.json

    monkeypatch.setattr(build, "save_pipeline", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        build.write_build(out, models, tokenizer_files, {"stages": []}, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]  # no temporary folder left
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # the earlier build untouched
    monkeypatch.setattr(build, "save_pipeline", real_save)
    build.write_build(out, models, tokenizer_files, {"stages": [{"seed": 7}]}, overwrite=True)
    assert not (out / "old.txt").exists()
    assert json.loads((out / "build_info.json").read_text())["stages"][0]["seed"] == 7
    assert (out / "tokenizer" / "merges.txt").read_bytes() == (tokenizer_files / "merges.txt").read_bytes()
    StableDiffusionPipeline.from_pretrained(out, safety_checker=None, feature_extractor=None,
                                            requires_safety_checker=False)
    with pytest.raises(esd_lora.errors.OutputExistsError, match="pass --overwrite"):
        build.write_build(out, models, tokenizer_files, {"stages": []})


@pytest.mark.parametrize("budget_s", [0.0, -30.0])
def test_a_budget_spent_before_the_unet_starts_ends_training_after_its_first_step(build, budget_s):
    # main() hands the UNet what is left of --budget-minutes after the VAE and text encoder: it can be <= 0
    clock = build.Clock(total_steps=1000, budget_s=budget_s)
    assert clock.done(1)
    assert build.cosine_lr(clock.progress(1)) == pytest.approx(0.1)  # the end of the schedule, not a warm-up


def test_a_budget_with_time_left_runs_by_its_steps(build):
    clock = build.Clock(total_steps=1000, budget_s=3600.0)
    assert not clock.done(999) and clock.done(1000)


def test_check_script_stores_the_rates_it_measured(load_script, monkeypatch, capsys, tmp_path, tiny_dirs):
    import json
    import shutil

    from esd_lora.base_rates import FILE

    model = tmp_path / "base"
    shutil.copytree(tiny_dirs["sd1"], model)
    check = load_script("scripts/check_bundled_base.py")
    monkeypatch.setattr("sys.argv", ["check", "--model", str(model), "--n", "1", "--steps", "2", "--seed", "4",
                                     "--store-rates", "--json", str(tmp_path / "scores.json")])
    check.main()
    assert f"stored the rates in {model / FILE}" in capsys.readouterr().out
    (measurement,) = json.loads((model / FILE).read_text())["measurements"]
    assert (measurement["n"], measurement["steps"], measurement["seed"]) == (1, 2, 4)
    assert measurement["rates"] == json.loads((tmp_path / "scores.json").read_text())

    # a base of another world version, judged by its own judge: that judge's measurement is stored beside
    from esd_lora.base_rates import judge_digest
    from esd_lora.bundled.judge import WEIGHTS_PATH, JudgeNet, save_weights

    other = tmp_path / "judge-v6.safetensors"
    save_weights(JudgeNet(), other)
    monkeypatch.setattr("sys.argv", ["check", "--model", str(model), "--n", "1", "--steps", "2", "--seed", "4",
                                     "--store-rates", "--judge", str(other)])
    check.main()
    measurements = json.loads((model / FILE).read_text())["measurements"]
    assert sorted(m["judge"] for m in measurements) == sorted([judge_digest(WEIGHTS_PATH), judge_digest(other)])
