"""Measure how well the bundled base model renders each concept of the bundled world.

For every concept (5 shapes, 4 colours, 4 patterns) and both phrasing splits of
``esd_lora.bundled.world.prompts_for`` ("train" and "held-out"), images are generated with the pipeline's own
DDIM sampler and labelled by the bundled judge (through ``esd_lora.evaluate``, without adapters); the share
judged as the prompted concept is printed as a table. The bar of the project: >= 95% for every concept.

Usage::

    python scripts/check_bundled_base.py --n 64 --steps 25 --guidance 5 [--model DIR] [--json F] [--grid F]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from esd_lora import BUNDLED_BASE, evaluate  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=BUNDLED_BASE)
    p.add_argument("--n", type=int, default=64, help="images per concept and split")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the scores to this file")
    p.add_argument("--grid", type=Path, default=None, help="also save a PNG with samples of every concept")
    args = p.parse_args()
    start = time.time()
    report = evaluate(args.model, n=args.n, steps=args.steps, guidance_scale=args.guidance, seed=args.seed,
                      device=args.device, dtype="fp32")
    scores = {r.concept: {} for r in report.rows}
    for r in report.rows:
        scores[r.concept][r.split] = r.base
    print(f"model {args.model}: DDIM {args.steps} steps, guidance {args.guidance}, {args.n} images per concept "
          "and split")
    print("| concept | train phrasings | held-out phrasings |\n| --- | --- | --- |")
    for concept, s in scores.items():
        print(f"| {concept} | {s['train']:.1%} | {s['held-out']:.1%} |")
    print(f"| **minimum** | {min(s['train'] for s in scores.values()):.1%} | "
          f"{min(s['held-out'] for s in scores.values()):.1%} |")
    print(f"took {time.time() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2))
    if args.grid:
        report.grid(per_concept=8).save(args.grid)


if __name__ == "__main__":
    main()
