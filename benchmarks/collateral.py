"""Where an erasure damages the other concepts of the bundled world: in prompts that also name the erased concept,
or in the rest.

    python benchmarks/collateral.py no-red.safetensors [more.safetensors ...] [--n 48] [--seed 1000] [--json F]

For each adapter (trained on the bundled base), every other concept's prompts (training and held-out phrasings
together) are split in two: those that also name an erased concept or one of its synonyms ("a red striped star"
for striped, when red is erased) and the rest ("a blue striped star", "striped"). ``--n`` prompts are drawn from
each, generated from the same seeds with and without the adapter, and judged; the erased concept itself is split
into its prompts naming nothing else ("red", "a crimson shape") and those naming a shape and a pattern as well.
Printed per concept and split: base rate, rate with the adapter, their ratio ("kept"); then the worst and mean
ratio per split. ``esd-lora evaluate`` gives one rate per concept over both; this tells a damaged concept
(stripes gone everywhere) from a damaged combination (stripes gone on red things only).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esd_lora.adapter import load_adapter  # noqa: E402
from esd_lora.bundled import world  # noqa: E402
from esd_lora.evaluate import generate_images, judged_as, sample_prompts  # noqa: E402
from esd_lora.families import load_pipeline  # noqa: E402
from esd_lora.errors import EsdLoraError  # noqa: E402
from esd_lora.stack import apply_adapters  # noqa: E402

WITH, WITHOUT = "names erased", "without"
ALONE, COMBINED = "alone", "combined"


def words_of(concepts: list[str]) -> set[str]:
    """Every synonym of the given concepts of the bundled world."""
    return {w for c in concepts for w in world.synonyms(c, "all")}


def names_any(prompt: str, words: set[str]) -> bool:
    return bool(words & set(prompt.replace(",", " ").lower().split()))


def plan(erased: list[str], n: int, seed: int) -> list[tuple[str, str, list[str]]]:
    """``(concept, split, prompts)`` for every concept of the world: the splits above, ``n`` prompts each (a split
    with no prompts, such as "names erased" for another colour when a colour is erased, is left out)."""
    erased_words = words_of(erased)
    rows = []
    for i, concept in enumerate(world.all_concepts()):
        pool = list(dict.fromkeys(p for split in ("train", "held-out") for p in world.prompts_for(concept, split)))
        if concept in erased:
            others = words_of([c for c in world.all_concepts() if c not in erased])
            groups = {ALONE: [p for p in pool if not names_any(p, others)],
                      COMBINED: [p for p in pool if names_any(p, others)]}
        else:
            groups = {WITH: [p for p in pool if names_any(p, erased_words)],
                      WITHOUT: [p for p in pool if not names_any(p, erased_words)]}
        rows += [(concept, split, sample_prompts(prompts, n, seed + 10 * i + j))
                 for j, (split, prompts) in enumerate(groups.items()) if prompts]
    return rows


def summarise(erased: list[str], rows: list[tuple[str, str, list[str]]], base: list[list[bool]],
              adapted: list[list[bool]]) -> dict:
    """Rates and ratios per concept and split, and the worst and mean ratio per split of the other concepts."""
    table = []
    for (concept, split, prompts), before, after in zip(rows, base, adapted):
        rate_base, rate = float(np.mean(before)), float(np.mean(after))
        table.append({"concept": concept, "split": split, "n": len(prompts), "base": rate_base, "adapted": rate,
                      "kept": rate / rate_base if rate_base else None})
    overall = {}
    for split in (WITH, WITHOUT):
        ratios = {r["concept"]: r["kept"] for r in table
                  if r["split"] == split and r["concept"] not in erased and r["kept"] is not None}
        if ratios:
            worst = min(ratios, key=ratios.get)
            overall[split] = {"worst": worst, "worst_kept": ratios[worst],
                              "mean_kept": float(np.mean(list(ratios.values())))}
    return {"erased": erased, "rows": table, "overall": overall}


def measure(pipe, adapter: str, n: int, seed: int, base_cache: dict | None = None) -> dict:
    """Judge ``adapter``'s plan with and without it; the base's judgments are kept in ``base_cache`` for the next
    adapter erasing the same concepts (same prompts and seeds, so the same images)."""
    base_cache = {} if base_cache is None else base_cache
    erased = load_adapter(adapter).metadata.config.concepts
    unknown = [c for c in erased if c not in world.all_concepts()]
    if unknown:
        raise SystemExit(f"error: {adapter} erases {', '.join(unknown)}, not a concept of the bundled world "
                         f"({', '.join(world.all_concepts())})")
    rows = plan(erased, n, seed)

    def run() -> list[list[bool]]:
        return [judged_as(generate_images(pipe, prompts, seed + 1000 * k, 25, 5.0, 256), concept)
                for k, (concept, _, prompts) in enumerate(rows)]

    apply_adapters(pipe, [adapter])  # checked against the base before any image is made
    try:
        pipe.disable_lora()
        key = (tuple(sorted(erased)), n, seed)
        if key not in base_cache:
            base_cache[key] = run()
        base = base_cache[key]
        pipe.enable_lora()
        adapted = run()
    finally:
        pipe.unload_lora_weights()
    return {"adapter": adapter, **summarise(erased, rows, base, adapted)}


def report_lines(result: dict) -> list[str]:
    lines = [f"== {result['adapter']} (erases {', '.join(result['erased'])})",
             f"{'concept':<10} {'prompts':<13} {'base':>5} {'adapted':>8} {'kept':>5}"]
    for r in result["rows"]:
        kept = "-" if r["kept"] is None else f"{r['kept']:.0%}"
        lines.append(f"{r['concept']:<10} {r['split']:<13} {r['base']:>5.0%} {r['adapted']:>8.0%} {kept:>5}")
    for split, o in result["overall"].items():
        lines.append(f"other concepts, prompts {split}: worst {o['worst']} {o['worst_kept']:.0%}, "
                     f"mean {o['mean_kept']:.0%}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("adapters", nargs="+", help="adapter files trained on the bundled base")
    parser.add_argument("--n", type=int, default=48, help="prompts per concept and split")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the prompt draws and the images")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--base", default="bundled", help="a copy of the bundled base to measure on")
    args = parser.parse_args()
    pipe = load_pipeline(args.base, device="cpu")
    results, base_cache = [], {}
    for adapter in args.adapters:
        start = time.perf_counter()
        try:
            results.append(measure(pipe, adapter, args.n, args.seed, base_cache))
        except EsdLoraError as exc:  # a missing or foreign adapter file: one line, as the CLI says it
            raise SystemExit(f"error: {exc}") from None
        print("\n".join(report_lines(results[-1])), f"\n({time.perf_counter() - start:.0f} s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
