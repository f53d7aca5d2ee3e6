"""How much of a measured rate is the judge: two judges trained alike, on generated images.

    python benchmarks/judge_agreement.py [--base bundled] [--judge-seed 2024] [--judge FILE] [--n 32] [--seed 0]

The bundled judge labels fresh renders of the concept world (almost) perfectly, but a diffusion model's images are
not renders: a blurry stripe, a plaid, dots run together. Which class such an image falls in depends on details of
the judge's training. This trains a second judge exactly like the shipped one but for its seed (``--judge-seed``;
3 to 10 minutes on 2 CPU cores, saved to ``--judge`` when given and loaded from it next time), generates every
concept of the world from its training and held-out phrasings (the images ``esd-lora evaluate`` judges), and prints
per concept and split the rate each judge gives and the share of images on which they disagree; then the
disagreement per dimension. A rate difference below the disagreement is judge noise.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from esd_lora.bundled import world  # noqa: E402
from esd_lora.bundled.judge import (  # noqa: E402
    JudgeNet, load_judge, load_weights, save_weights, to_tensor, train_judge, weights_problem)
from esd_lora.evaluate import generate_images, sample_prompts  # noqa: E402
from esd_lora.families import load_pipeline  # noqa: E402


@torch.no_grad()
def compare(images, concept: str, first: JudgeNet, second: JudgeNet) -> dict[str, float]:
    """Rate at which each judge labels ``images`` as ``concept``, and the share of images they label differently."""
    dim = world.concept_dimension(concept)
    target = world.CONCEPTS[dim].index(concept)
    x = to_tensor(images)
    a, b = first(x)[dim].argmax(-1), second(x)[dim].argmax(-1)
    return {"first": (a == target).float().mean().item(), "second": (b == target).float().mean().item(),
            "disagree": (a != b).float().mean().item()}


def second_judge(seed: int, path: Path | None) -> JudgeNet:
    """The judge trained like the shipped one with ``seed``: loaded from ``path`` if it exists, else trained."""
    if path is not None and path.is_file():
        return load_weights(path)
    start = time.time()
    net = train_judge(seed=seed)
    print(f"trained the second judge (seed {seed}) in {time.time() - start:.0f} s", flush=True)
    if path is not None:
        save_weights(net, path)
    return net.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="bundled", help="a pipeline of the bundled world (default: the bundled base)")
    p.add_argument("--judge-seed", type=int, default=2024, help="training seed of the second judge")
    p.add_argument("--judge", type=Path, default=None, help="load the second judge from this file, or save it there")
    p.add_argument("--n", type=int, default=32, help="images per concept and phrasing split")
    p.add_argument("--seed", type=int, default=0, help="prompt and generation seed")
    args = p.parse_args()
    if args.n < 1:
        p.error("--n must be at least 1")
    if args.judge_seed == 1_000:
        p.error("--judge-seed 1000 is the shipped judge's own seed; pick another")
    if args.judge is not None and not args.judge.is_file() and not args.judge.parent.is_dir():
        p.error(f"--judge {args.judge}: its folder does not exist; create it or pick another path")
    if args.judge is not None and args.judge.is_file() and (problem := weights_problem(args.judge)):
        p.error(f"--judge {args.judge}: {problem}")
    second = second_judge(args.judge_seed, args.judge)
    pipe = load_pipeline(args.base, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    print(f"| concept | split | shipped judge | seed {args.judge_seed} judge | disagree |")
    print("| --- | --- | --- | --- | --- |")
    totals = {d: [0.0, 0] for d in world.DIMENSIONS}
    for concept in world.all_concepts():
        for split in ("train", "held-out"):
            prompts = sample_prompts(world.prompts_for(concept, split), args.n, args.seed)
            r = compare(generate_images(pipe, prompts, args.seed, 25, 5.0, 64), concept, load_judge(), second)
            print(f"| {concept} | {split} | {r['first']:.0%} | {r['second']:.0%} | {r['disagree']:.0%} |", flush=True)
            totals[world.concept_dimension(concept)][0] += r["disagree"] * args.n
            totals[world.concept_dimension(concept)][1] += args.n
    for dim, (disagree, n) in totals.items():
        print(f"{dim}: the judges disagree on {disagree / n:.1%} of {n} generated images")


if __name__ == "__main__":
    main()
