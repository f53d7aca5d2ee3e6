"""The bundled base's build script: oversampling of chosen concepts (its helpers; a build takes an hour)."""

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
