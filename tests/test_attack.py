"""Recovery attacks (`esd-lora attack`) and adversarial erasure (`esd-lora erase --adversarial`).

On the bundled base, one deliberately weak erasure of red (ESD-x, 60 steps: red falls from 100% to 12%, not to 0) is
attacked once, with a small budget; every attack but paraphrase must bring red back above the no-attack rate.
Paraphrases cannot on this base: its text encoder writes the same code for every synonym and template (by
construction), so the erasure of "red" is one of "ruby" too; the test checks the attack's plumbing instead.
The CLI, the real-model path (images and a manifest for an external judge) and the bad inputs run on the tiny
random pipelines.
"""

import csv
import importlib
import json
from types import SimpleNamespace

import pytest
import torch

import esd_lora
from esd_lora.attack import SoftPrompt, attack, encode, is_bundled, match_loss
from esd_lora.config import ADVERSARIAL_EVERY
from esd_lora.bundled import world
from esd_lora.cli import build_parser, main
from esd_lora.cli.erase import erase_options
from esd_lora.config import EraseConfig
from esd_lora.errors import (AdapterShapeMismatchError, ConfigError, OutputExistsError,
                             UnsupportedAttackError)
from esd_lora.evaluate import UnknownConceptError
from esd_lora.families import load_pipeline

OPTIMISING = ("soft-prompt", "hard-prompt", "textual-inversion")
attack_module = importlib.import_module("esd_lora.attack")  # esd_lora.attack is also the function


@pytest.fixture(scope="module")
def bundled():
    return load_pipeline("bundled", device="cpu")


@pytest.fixture(scope="module")
def weak_red(bundled, tmp_path_factory):
    """A deliberately weak erasure of red: ESD-x at eta 1 without contexts (the bundled base's previous default),
    60 steps: red at 12% of the no-attack images, the hard-prompt attack 25%, the others 50-75% (at 40 steps, before
    the first bank refresh at 50, red is not erased at all; at 70 the hard prompt brings nothing back). (The current
    default, held in place on the text side and erasing at half the guidance, still draws red in every image after
    80 steps: nothing for an attack to bring back.)"""
    out = tmp_path_factory.mktemp("weak") / "weak-red.safetensors"
    esd_lora.erase(bundled, "red", iterations=60, progress=False, out=out, method="esd-x", eta=1.0, contexts=[],
                   preserve_text_weight=0.0)
    return out


@pytest.fixture(scope="module")
def report(bundled, weak_red):
    return attack(bundled, adapters=[str(weak_red)], concept="red", n=16, steps=10, budget=60, handoff=0.3)


def test_weak_erasure_lowers_red_without_removing_it(report):
    none = report.result("none").success_rate
    assert report.base_rate >= 0.9
    assert 0 < none <= report.base_rate - 0.3


@pytest.mark.parametrize("name", [*OPTIMISING, "completion"])
def test_attack_brings_the_concept_back(report, name):
    result = report.result(name)
    assert result.images == 16
    assert result.success_rate > report.result("none").success_rate, report.table()


def test_attacks_use_the_seeds_and_prompts_of_the_no_attack_run(report):
    none = report.runs["none"]
    for name in ("base", *OPTIMISING, "completion"):
        assert report.runs[name].seeds == none.seeds
    for name in ("soft-prompt", "hard-prompt"):  # the concept prompts, something appended
        assert all(p.startswith(q + " ") for p, q in zip(report.runs[name].prompts, none.prompts))
    assert report.runs["completion"].prompts == none.prompts
    assert report.result("completion").budget == 3  # 30% of the 10 steps by the base model


def test_paraphrases_are_the_held_out_phrasings(report):
    prompts = report.runs["paraphrase"].prompts
    assert set(prompts) <= set(world.prompts_for("red", "held-out"))
    assert not set(prompts) & set(world.prompts_for("red", "train"))
    result = report.result("paraphrase")
    assert result.budget == len(world.prompts_for("red", "held-out")) and result.success_rate is not None


def test_hard_prompt_is_made_of_real_words(report, bundled):
    typed = report.runs["hard-prompt"].prompts[0].removeprefix(report.runs["none"].prompts[0]).split()
    assert len(typed) == 4 and all(word.isascii() and word.isalpha() for word in typed)
    ids = bundled.tokenizer(" ".join(typed)).input_ids
    assert len(ids) == 4 + 2 and max(ids) < 757  # one known token per word, between start and end


def test_pipeline_is_left_as_it_was(report, bundled):
    assert len(bundled.tokenizer) == 757
    assert bundled.text_encoder.get_input_embeddings().weight.shape[0] == 757
    assert not getattr(bundled.unet, "peft_config", None)


def test_report_files_agree_with_the_table(report, tmp_path):
    out = report.save(tmp_path / "report")
    assert (out / "report.txt").read_text().strip() == report.table()
    saved = json.loads((out / "report.json").read_text())
    assert [(r["attack"], r["success_rate"]) for r in saved["rows"]] == [(r.attack, r.success_rate)
                                                                          for r in report.rows]
    assert saved["base_rate"] == report.base_rate
    for row in report.rows:  # the printed table shows each rate
        assert f"{row.attack:<18} {row.success_rate:>7.0%}" in report.table()
    with (out / "manifest.csv").open() as f:
        manifest = list(csv.DictReader(f))
    soft = [m for m in manifest if m["run"] == "soft-prompt"]
    assert sum(m["judged_as_concept"] == "True" for m in soft) == report.result("soft-prompt").successes
    assert all((out / m["path"]).is_file() for m in manifest) and len(manifest) == 16 * len(report.runs)
    assert (out / "grid.png").stat().st_size > 0
    with pytest.raises(OutputExistsError):
        report.save(out)


def test_cli_on_a_base_without_judge_writes_images_and_manifest(tiny_dirs, sd1_adapter, tmp_path, capsys):
    paraphrases = tmp_path / "red.txt"
    paraphrases.write_text("# crimson things\ncrimson\n\na scarlet box\n")
    out = tmp_path / "attacks"
    argv = ["attack", "--base", str(tiny_dirs["sd1"]), "--adapter", str(sd1_adapter), "--concept", "red",
            "--n", "2", "--steps", "2", "--budget", "2", "--paraphrases", str(paraphrases), "--out", str(out)]
    assert main(argv) == 0
    printed, progress = capsys.readouterr()
    assert (out / "report.txt").read_text().strip() in printed
    assert "attacking: 100%" in progress and " 7/7 " in progress  # base, no attack, then the five attacks
    assert "no judge for this base" in printed
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [r["attack"] for r in rows] == ["none", "paraphrase", *OPTIMISING, "completion"]
    assert all(r["success_rate"] is None for r in rows)
    with (out / "manifest.csv").open() as f:
        manifest = list(csv.DictReader(f))
    assert {m["prompt"] for m in manifest if m["run"] == "paraphrase"} <= {"crimson", "a scarlet box"}
    assert all((out / m["path"]).is_file() and m["judged_as_concept"] == "" for m in manifest)
    assert main(argv) == 1 and "already exists" in capsys.readouterr().err
    assert main([*argv[:-2], "--attacks", "completion", "--out", str(out), "--overwrite", "--quiet"]) == 0
    assert "attacking" not in capsys.readouterr().err


def test_a_run_that_fails_closes_the_bar_before_the_error(tiny_dirs, sd1_adapter, monkeypatch, capsys):
    """The bar is finished on its own line, then the one-line error: not the error appended to a half-drawn bar."""
    run = attack_module._Attacker.run

    def failing(self, name):
        if name == "none":
            raise ConfigError("the attack went wrong")
        return run(self, name)

    monkeypatch.setattr(attack_module._Attacker, "run", failing)
    argv = ["attack", "--base", str(tiny_dirs["sd1"]), "--adapter", str(sd1_adapter), "--concept", "red",
            "--n", "1", "--steps", "1", "--attacks", "completion"]
    assert main(argv) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[-1] == "error: the attack went wrong"
    assert "attacking:" in lines[-2] and " 1/3 " in lines[-2]  # the base run done, then the failure


@pytest.mark.parametrize("options, error, match", [
    ({"concept": "purple"}, UnknownConceptError, "does not know purple: it knows circle.*red"),
    ({"budget": 0}, ConfigError, "budget must be a positive integer"),
    ({"budget": "many"}, ConfigError, "budget must be a positive integer"),
    ({"n": True}, ConfigError, "n must be a positive integer"),
    ({"handoff": 1.0}, ConfigError, "handoff must be a share"),
    ({"attacks": ["jailbreak"]}, ConfigError, "unknown attack.*jailbreak.*choose from paraphrase"),
    ({"adapters": []}, ConfigError, "no adapter to attack"),
])
def test_bad_input_fails_before_any_work(options, error, match):
    with pytest.raises(error, match=match):
        attack(**{"adapters": ["missing.safetensors"], "concept": "red", **options})


def test_adapter_for_another_base_is_refused(sd1_adapter, capsys):
    argv = ["attack", "--adapter", str(sd1_adapter), "--concept", "red", "--n", "2"]
    assert main(argv) == 1
    assert "does not fit this base" in capsys.readouterr().err
    with pytest.raises(AdapterShapeMismatchError):
        attack(adapters=[str(sd1_adapter)], concept="red")


def test_paraphrases_outside_the_bundled_world_need_a_file(tiny_dirs, sd1_adapter):
    with pytest.raises(ConfigError, match="--paraphrases FILE"):
        attack(tiny_dirs["sd1"], adapters=[str(sd1_adapter)], concept="van gogh", attacks=["paraphrase"])


def test_soft_prompts_on_sdxl_are_refused(tiny_dirs):
    with pytest.raises(UnsupportedAttackError, match="StableDiffusionPipeline.*paraphrase completion"):
        attack(tiny_dirs["sdxl"], adapters=["any.safetensors"], concept="red", attacks=["soft-prompt"])
    with pytest.raises(UnsupportedAttackError):
        esd_lora.erase(tiny_dirs["sdxl"], "red", iterations=1, ddim_steps=2, adversarial_every=1, progress=False)


def test_soft_prompt_optimisation_moves_only_its_vectors_and_is_undone(sd1_pipe):
    before = encode(sd1_pipe, ["red"]).detach()
    weights = {k: v.clone() for k, v in sd1_pipe.text_encoder.state_dict().items()}
    soft = SoftPrompt(sd1_pipe, 2, generator=torch.Generator().manual_seed(0), name="t")
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([10, 500, 900])
    target = torch.randn(3, 4, 8, 8)
    prompts = [soft.apply(p) for p in ("red", "a red box", "red")]
    with soft.installed():
        start = match_loss(sd1_pipe, prompts, x, t, target).item()
        soft.optimise(20, 0.05, lambda: match_loss(sd1_pipe, prompts, x, t, target))
        assert match_loss(sd1_pipe, prompts, x, t, target).item() < start
    assert all(torch.equal(v, weights[k]) for k, v in sd1_pipe.text_encoder.state_dict().items())
    assert torch.equal(encode(sd1_pipe, ["red"]), before) and len(sd1_pipe.tokenizer) == 75


def test_adversarial_erasure_runs_end_to_end(tiny_dirs, sd1_pipe, tmp_path):
    common = ["erase", "red", "--base", str(tiny_dirs["sd1"]), "--iterations", "3", "--ddim-steps", "3",
              "--lr", "0.05", "--quiet"]
    assert main([*common, "--out", str(tmp_path / "plain.safetensors")]) == 0
    assert main([*common, "--adversarial-every", "2", "--adversarial-steps", "3",
                 "--out", str(tmp_path / "adv.safetensors")]) == 0
    plain, adversarial = (esd_lora.load_adapter(tmp_path / f) for f in ("plain.safetensors", "adv.safetensors"))
    assert adversarial.metadata.config.adversarial_every == 2 and plain.metadata.config.adversarial_every == 0
    assert any(not torch.equal(adversarial.state_dict[k], plain.state_dict[k]) for k in plain.state_dict)
    esd_lora.erase(sd1_pipe, "red", iterations=2, ddim_steps=3, adversarial_every=1, adversarial_steps=1,
                   progress=False)
    assert len(sd1_pipe.tokenizer) == 75 and not getattr(sd1_pipe.unet, "peft_config", None)


def test_adversarial_flag_and_bad_values():
    parser = build_parser()
    assert erase_options(parser.parse_args(["erase", "red", "--adversarial"]))["adversarial_every"] == \
        ADVERSARIAL_EVERY
    assert erase_options(parser.parse_args(["erase", "red", "--adversarial", "--adversarial-every", "3"]))[
        "adversarial_every"] == 3
    assert "adversarial_every" not in erase_options(parser.parse_args(["erase", "red"]))
    with pytest.raises(ConfigError, match="adversarial_every must be 0 .off. or a positive integer"):
        EraseConfig(concepts=["red"], adversarial_every=-1)
    with pytest.raises(ConfigError, match="adversarial_steps must be a positive integer"):
        EraseConfig(concepts=["red"], adversarial_steps=0)


@pytest.mark.parametrize("base, bundled", [(None, True), ("bundled", True), (esd_lora.BUNDLED_BASE, True),
                                           ("./sd15", False), ("owner/model", False)])
def test_the_bundled_base_is_recognised_by_name_folder_or_pipeline(base, bundled):
    """Only the bundled base is judged by the bundled judge; a pipeline built in memory (no folder) is not it."""
    assert is_bundled(base) is bundled
    pipeline = SimpleNamespace(unet=None, name_or_path=base)
    assert is_bundled(pipeline) is (bundled and base is not None)

