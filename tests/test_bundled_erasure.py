"""End to end on the bundled base: `esd-lora erase` with its defaults erases a concept and spares the others.

The project's bar: the erased concept falls to <= 10% of its prompts (training phrasings, and held-out phrasings and
synonyms) from >= 95%, and every other concept keeps >= 90% of its base rate. Both are asserted as they stand, over
every concept of the bundled world: the default erasure of red (the bundled base's recommendation: keys and values
only, the other concepts' names held on the text side, red also erased inside every scene that names it, at half
the negative guidance) took red to 2 of 32 images in its training phrasings and 0 of 32 in its held-out ones, and
kept every other concept at >= 97% of its base rate (dotted 97%; README, "The bundled base model and measuring an
erasure"). The base rates are the bundled base's stored measurement at these settings (``base_rates.json``,
read by evaluate; ``test_base_rates`` checks it against the shipped weights and a fresh measurement), so only the
adapted images are generated. Slow (about 5 minutes on 2 CPU cores); CI runs it, alone (README: the second pytest
command).

The test trains with 2 torch threads, as it was measured, also under pytest-xdist's one thread a worker: the same
seeded erasure trains other weights with another thread count (float sums in another order, on trajectories the
adapter samples itself; docs/erasure-settings.md, "The default erasure and the thread count").
"""

import pytest

import esd_lora
from esd_lora.bundled import world
from esd_lora.families import load_pipeline

pytestmark = pytest.mark.slow


def test_default_erasure_of_red_end_to_end(tmp_path, two_threads):
    bundled = load_pipeline("bundled", device="cpu")
    out = tmp_path / "no-red.safetensors"
    adapter = esd_lora.erase(bundled, "red", out=out, progress=False)
    print(f"erased red in {adapter.metadata.wall_time_s:.0f} s")  # the time budget is a benchmark's job
    report = esd_lora.evaluate(bundled, adapters=[str(out)], n=32, seed=1)
    print(report.table())
    for split in ("train", "held-out"):  # held-out: unseen templates and synonyms (ruby, ...)
        assert report.rate("red", "base", split) >= 0.95, f"the base draws red in too few images ({split})"
        assert report.rate("red", "adapted", split) <= 0.1, f"red not erased ({split})"
    for other in world.all_concepts():
        if other != "red":
            assert report.rate(other) >= 0.9 * report.rate(other, "base"), f"erasing red damaged {other}"
