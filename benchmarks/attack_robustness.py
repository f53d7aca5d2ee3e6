"""Plain vs adversarial erasure on the bundled base: attack success rates, specificity and training time.

    python benchmarks/attack_robustness.py [--concept red] [--settings plain adversarial] [--iterations 400]
                                           [--adversarial-every 10] [--n 32] [--budget 200] [--steps 25]
                                           [--specificity-n 16] [--json results.json]

For each setting it erases the concept from the bundled base with the library defaults (plain) or with
``adversarial_every`` (adversarial), then runs every recovery attack of ``esd-lora attack`` against the adapter
(``n`` images per attack, ``budget`` optimisation steps) and evaluates every other concept of the bundled world
with and without the adapter (``specificity-n`` images per concept and phrasing split). Printed: a Markdown
table with, per setting, the training time (and its multiple of the plain one), the success rate of no attack
and of each attack, and the share of their base rate the other concepts keep (mean and worst, over those the
base draws at least half the time).
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
from esd_lora.attack import attack  # noqa: E402
from esd_lora.config import ADVERSARIAL_EVERY, ATTACKS  # noqa: E402
from esd_lora.bundled import world  # noqa: E402
from esd_lora.families import load_pipeline  # noqa: E402


def run(pipe, concept: str, setting: str, args) -> dict:
    """Erase ``concept`` with ``setting``, attack the adapter, and measure what the other concepts keep."""
    every = args.adversarial_every if setting == "adversarial" else 0
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "erasure.safetensors"
        started = time.perf_counter()
        esd_lora.erase(pipe, concept, iterations=args.iterations, adversarial_every=every, out=path,
                       progress=False, seed=args.seed)
        seconds = time.perf_counter() - started
        report = attack(pipe, adapters=[str(path)], concept=concept, n=args.n, steps=args.steps,
                        budget=args.budget, seed=args.seed + 1)
        others = [c for c in world.all_concepts() if c != concept]
        kept = {}
        if args.specificity_n:
            evaluation = esd_lora.evaluate(pipe, adapters=[str(path)], concepts=others, n=args.specificity_n,
                                           steps=args.steps, seed=args.seed + 2)
            kept = {c: evaluation.rate(c) / evaluation.rate(c, "base") for c in others
                    if evaluation.rate(c, "base") >= 0.5}  # ratios of rarely drawn concepts are noise
    print(report.table(), flush=True)
    return {"setting": setting, "concept": concept, "train_seconds": seconds,
            "base_rate": report.base_rate,
            "success": {r.attack: r.success_rate for r in report.rows},
            "attack_seconds": {r.attack: r.seconds for r in report.rows},
            "kept_mean": sum(kept.values()) / len(kept) if kept else None,
            "kept_worst": min(kept.items(), key=lambda kv: kv[1]) if kept else None}


def markdown(results: list[dict]) -> str:
    """The README table: one row per setting."""
    attacks = ["none", *ATTACKS]
    plain = next((r["train_seconds"] for r in results if r["setting"] == "plain"), None)
    lines = ["| erasure | training | " + " | ".join(attacks) + " | other concepts kept (mean / worst) |",
             "| --- | --- | " + " | ".join("---" for _ in attacks) + " | --- |"]
    for r in results:
        time_text = f"{r['train_seconds']:.0f} s" + (f" ({r['train_seconds'] / plain:.1f}x)" if plain else "")
        rates = " | ".join("-" if r["success"].get(a) is None else f"{r['success'][a]:.0%}" for a in attacks)
        kept = ("-" if r["kept_mean"] is None else
                f"{r['kept_mean']:.0%} / {r['kept_worst'][1]:.0%} ({r['kept_worst'][0]})")
        lines.append(f"| {r['setting']} | {time_text} | {rates} | {kept} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concept", default="red", choices=world.all_concepts())
    parser.add_argument("--settings", nargs="+", default=["plain", "adversarial"], choices=["plain", "adversarial"])
    parser.add_argument("--iterations", type=int, default=400, help="erasure steps (the library default: 400)")
    parser.add_argument("--adversarial-every", type=int, default=ADVERSARIAL_EVERY)
    parser.add_argument("--n", type=int, default=32, help="images per attack")
    parser.add_argument("--budget", type=int, default=200, help="optimisation steps of each optimising attack")
    parser.add_argument("--steps", type=int, default=25, help="sampling steps")
    parser.add_argument("--specificity-n", type=int, default=16,
                        help="images per other concept and phrasing split (0: skip specificity)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args()
    pipe = load_pipeline("bundled", device="cpu")
    results = [run(pipe, args.concept, setting, args) for setting in args.settings]
    print(markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
