"""End to end on the bundled base: `esd-lora erase` with its defaults meets the project's erasure bar.

The bar: the erased concept falls to <= 10% of its prompts (training phrasings, and held-out phrasings and
synonyms), and every other concept keeps >= 90% of its base rate. Slow (a few minutes on 2 CPU cores); CI runs it.
"""

import pytest

import esd_lora
from esd_lora.bundled import world
from esd_lora.families import load_pipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bundled():
    return load_pipeline("bundled", device="cpu")


@pytest.mark.parametrize("concept", ["red"])
def test_default_erasure_meets_the_bar(bundled, tmp_path, concept):
    out = tmp_path / f"no-{concept}.safetensors"
    adapter = esd_lora.erase(bundled, concept, out=out, progress=False)
    print(f"erased {concept} in {adapter.metadata.wall_time_s:.0f} s")  # the time budget is a benchmark's job
    report = esd_lora.evaluate(bundled, adapters=[str(out)], n=32, seed=1)
    print(report.table())
    for split in ("train", "held-out"):
        assert report.rate(concept, "base", split) >= 0.9, f"base does not draw {concept} ({split})"
        assert report.rate(concept, "adapted", split) <= 0.10, f"{concept} not erased ({split})"
    for other in world.all_concepts():
        if other != concept:
            assert report.rate(other) >= 0.9 * report.rate(other, "base"), f"erasing {concept} damaged {other}"
