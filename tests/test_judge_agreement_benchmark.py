"""benchmarks/judge_agreement.py: rates of two judges on the same images and where they disagree."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from esd_lora.bundled import world
from esd_lora.bundled.judge import WEIGHTS_PATH, JudgeNet, load_judge


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("benchmarks/judge_agreement.py")


@pytest.fixture(scope="module")
def dotted_renders():
    rng = np.random.default_rng(5)
    return np.stack([world.render_array(world.CONCEPTS["shape"][i % 5], "red", "dotted", rng) for i in range(20)])


def test_a_judge_agrees_with_itself(bench, dotted_renders):
    r = bench.compare(dotted_renders, "dotted", load_judge(), load_judge())
    assert r == {"first": 1.0, "second": 1.0, "disagree": 0.0}


def test_a_judge_that_sees_no_dots_disagrees_on_every_dotted_image(bench, dotted_renders):
    blind = JudgeNet()
    blind.load_state_dict(load_judge().state_dict())
    with torch.no_grad():  # every image is "solid" on the pattern head; shapes and colours untouched
        blind.heads["pattern"].bias[world.CONCEPTS["pattern"].index("solid")] += 1e4
    assert bench.compare(dotted_renders, "dotted", load_judge(), blind) == {"first": 1.0, "second": 0.0,
                                                                            "disagree": 1.0}
    assert bench.compare(dotted_renders, "red", load_judge(), blind)["disagree"] == 0.0


def test_second_judge_is_loaded_from_its_file_without_training(bench, tmp_path, monkeypatch):
    path = tmp_path / "judge.safetensors"
    save_file(load_file(str(WEIGHTS_PATH)), str(path))
    monkeypatch.setattr(bench, "train_judge", lambda **_: pytest.fail("trained although the file exists"))
    net = bench.second_judge(7, path)
    x = torch.zeros(1, 3, 32, 32)
    assert torch.equal(net(x)["shape"], load_judge()(x)["shape"])


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "bad.safetensors").write_bytes(b"x"), "not the weights of a bundled judge"),
    (lambda d: save_file({"a": torch.zeros(1)}, str(d / "bad.safetensors")), "not the weights of a bundled judge"),
    (lambda d: None, "its folder does not exist"),
])
def test_bad_judge_file_is_a_one_line_error(bench, tmp_path, monkeypatch, capsys, make, message):
    make(tmp_path)
    path = tmp_path / "bad.safetensors" if message != "its folder does not exist" else tmp_path / "no" / "j.st"
    monkeypatch.setattr("sys.argv", ["judge_agreement.py", "--judge", str(path)])
    monkeypatch.setattr(bench, "train_judge", lambda **_: pytest.fail("trained a judge for a bad --judge"))
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
