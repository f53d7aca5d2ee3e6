"""Erasure quality on the bundled base: efficacy, specificity and wall time, per concept and setting.

    python benchmarks/erase_quality.py [--concepts red star striped] [--settings default plain preserve cosine]
                                       [--n 32] [--json results.json] [--base DIR]

For each concept and setting it trains an adapter on the bundled base, then evaluates every concept of the
bundled world (training and held-out phrasings) with and without the adapter, from the same prompts and seeds.
A run passes when the erased concept is at most 10% on both phrasing splits.
Printed per run: the erased concept's rate (base -> adapted, train and held-out phrasings), the worst ratio
adapted/base over the other concepts, and the training wall time. The bar of the project: erased <= 10%,
every other concept >= 90% of its base rate, in at most 3 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import esd_lora  # noqa: E402
from esd_lora.bundled import world  # noqa: E402
from esd_lora.families import load_pipeline  # noqa: E402

SETTINGS = {  # name -> erase options on top of the library defaults
    "default": {},
    "plain": {"preserve": []},
    "preserve": {"preserve": "others"},
    "frozen-sampler": {"sample_with": "frozen"},
    "cosine": {"lr_schedule": "cosine"},
}


def options_for(setting: str, concept: str) -> dict:
    options = dict(SETTINGS[setting])
    if options.get("preserve") == "others":  # every other concept of the world, in a plain phrasing
        options["preserve"] = [c for c in world.all_concepts() if c != concept]
    return options


def run(pipe, concept: str, setting: str, n: int, seed: int) -> dict:
    options = options_for(setting, concept)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "a.safetensors"
        start = time.perf_counter()
        esd_lora.erase(pipe, concept, out=path, progress=False, seed=seed, **options)
        seconds = time.perf_counter() - start
        report = esd_lora.evaluate(pipe, adapters=[str(path)], n=n, seed=seed + 1)
    ratios = report.kept([concept])
    worst = min(ratios, key=ratios.get)
    return {"concept": concept, "setting": setting, "seconds": seconds,
            "base": report.rate(concept, "base"),
            "erased_train": report.rate(concept, split="train"),
            "erased_held_out": report.rate(concept, split="held-out"),
            "worst_other": worst, "worst_other_ratio": ratios[worst],
            "passes": max(report.rate(concept, split=s) for s in ("train", "held-out")) <= 0.10
            and ratios[worst] >= 0.90 and seconds <= 180,
            "rows": report.to_dict()["rows"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concepts", nargs="+", default=["red", "star", "striped"])
    parser.add_argument("--settings", nargs="+", default=["default"], choices=list(SETTINGS))
    parser.add_argument("--n", type=int, default=32, help="images per concept and phrasing split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    parser.add_argument("--base", default="bundled", help="a copy of the bundled base (e.g. a rebuild) to measure")
    args = parser.parse_args()
    pipe = load_pipeline(args.base, device="cpu")
    print(f"{'concept':<9} {'setting':<15} {'base':>5} {'train':>6} {'held-out':>8} {'worst other':>19} "
          f"{'seconds':>7}  bar")
    results = []
    for concept in args.concepts:
        for setting in args.settings:
            r = run(pipe, concept, setting, args.n, args.seed)
            results.append(r)
            print(f"{concept:<9} {setting:<15} {r['base']:>5.0%} {r['erased_train']:>6.0%} "
                  f"{r['erased_held_out']:>8.0%} {r['worst_other']:>9} {r['worst_other_ratio']:>8.0%} "
                  f"{r['seconds']:>7.0f}  {'pass' if r['passes'] else 'FAIL'}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
