"""Several erasures on the bundled base: one adapter trained on all the concepts vs one adapter per concept, stacked.

    python benchmarks/stack_vs_multi.py [--counts 2 4 8] [--n 16] [--catalog adapters] [--json results.json]

For k erased concepts (taken in order from red, star, striped, blue, circle, dotted, green, square, so that every
dimension is hit), it trains k single-concept adapters (with the library defaults) and stacks them with weight 1,
and one multi-concept adapter with the same total number of training steps (the sum of the singles' iterations:
a shape's are 600, the others' 400), then evaluates both on every concept of the bundled world. Printed per k and
path:

* efficacy: the mean and the worst (highest) rate of the erased concepts (training and held-out phrasings);
* specificity: the worst ratio adapted / base over the concepts that were not erased;
* training time.

Single-concept adapters are trained once and reused across k; with ``--catalog DIR`` they are taken from the
catalog built by ``scripts/build_catalog.py`` (same defaults and seed) instead of being trained again.
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
from esd_lora.erase import make_config  # noqa: E402
from esd_lora.families import load_pipeline  # noqa: E402

ORDER = ["red", "star", "striped", "blue", "circle", "dotted", "green", "square"]


def scores(report, erased: list[str]) -> dict:
    rates = [report.rate(c) for c in erased]
    ratios = report.kept(erased)
    worst = min(ratios, key=ratios.get)
    return {"erased_mean": sum(rates) / len(rates), "erased_worst": max(rates),
            "worst_other": worst, "worst_other_ratio": ratios[worst]}


def catalog_singles(folder: Path) -> dict[str, tuple[str, float]]:
    """The single-concept adapters of a catalog: concept -> (file, training seconds)."""
    index = json.loads((folder / "index.json").read_text())
    return {e["concepts"][0]: (str(folder / e["file"]), e["train_seconds"])
            for e in index["adapters"] if len(e["concepts"]) == 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", nargs="+", type=int, default=[2, 4, 8])
    parser.add_argument("--n", type=int, default=16, help="images per concept and phrasing split")
    parser.add_argument("--catalog", default=None, metavar="DIR",
                        help="take the single-concept adapters from this catalog (its index.json) when present")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if max(args.counts) > len(ORDER) or min(args.counts) < 1:
        parser.error(f"counts must be between 1 and {len(ORDER)}")
    pipe = load_pipeline("bundled", device="cpu")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        singles, single_seconds = {}, {}
        print(f"{'k':>2} {'path':<7} {'erased mean':>11} {'erased worst':>12} {'worst other':>20} {'train s':>8}")
        for k in args.counts:
            erased = ORDER[:k]
            iterations = sum(make_config("bundled", concept).iterations for concept in erased)  # the singles' total
            start = time.perf_counter()
            multi = esd_lora.erase(pipe, erased, iterations=iterations, progress=False, seed=args.seed,
                                   out=Path(tmp) / f"multi-{k}.safetensors")
            multi_seconds = time.perf_counter() - start
            if args.catalog:  # read now: a catalog being built alongside may have grown meanwhile
                for concept, (path, seconds) in catalog_singles(Path(args.catalog)).items():
                    singles.setdefault(concept, path)
                    single_seconds.setdefault(concept, seconds)
            for concept in erased:
                if concept not in singles:
                    start = time.perf_counter()
                    singles[concept] = str(esd_lora.erase(pipe, concept, out=Path(tmp) / f"{concept}.safetensors",
                                                          progress=False, seed=args.seed).path)
                    single_seconds[concept] = time.perf_counter() - start
            for path, adapters, seconds in (("stacked", [singles[c] for c in erased],
                                             sum(single_seconds[c] for c in erased)),
                                            ("multi", [str(multi.path)], multi_seconds)):
                report = esd_lora.evaluate(pipe, adapters=adapters, n=args.n, seed=args.seed + 1)
                row = {"k": k, "path": path, "erased": erased, "train_seconds": seconds, **scores(report, erased)}
                results.append(row)
                print(f"{k:>2} {path:<7} {row['erased_mean']:>11.0%} {row['erased_worst']:>12.0%} "
                      f"{row['worst_other']:>11} {row['worst_other_ratio']:>8.0%} {seconds:>8.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
