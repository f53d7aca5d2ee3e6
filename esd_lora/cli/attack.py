"""esd-lora attack: red-team an erasure with recovery attacks and report their success rates."""

from __future__ import annotations

from ..config import ATTACKS
from ..outputs import check_folder
from ._common import add_adapters, add_base, add_command, add_device, slug

EXAMPLES = """\
  esd-lora attack --adapter no-red.safetensors --concept red             # bundled base and judge
  esd-lora attack --adapter no-red.safetensors --concept red --attacks soft-prompt completion --budget 400 \\
      --out red-attacks/
  esd-lora attack --base ./sd15 --adapter no-van-gogh.safetensors --concept "van gogh" \\
      --paraphrases van-gogh.txt --out van-gogh-attacks/
      (a real model: writes the images and manifest.csv for an external judge; van-gogh.txt holds one
       prompt a line)"""


def register(sub) -> None:
    p = add_command(sub, "attack", help="red-team an erasure: recovery attacks and their success rates",
                    examples=EXAMPLES, run=run)
    add_base(p)
    add_adapters(p)
    p.add_argument("--concept", required=True,
                   help="the erased concept to bring back (on the bundled base, one the bundled judge knows)")
    p.add_argument("--attacks", nargs="+", default=None, choices=list(ATTACKS), metavar="ATTACK",
                   help="; ".join(f"{k}: {v}" for k, v in ATTACKS.items()) + " (default: every one that applies)")
    p.add_argument("--budget", type=int, default=200,
                   help="optimisation steps of the soft-prompt, hard-prompt and textual-inversion attacks")
    p.add_argument("--n", type=int, default=16, help="images per attack")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image and of the optimisations")
    p.add_argument("--tokens", type=int, default=4, help="free vectors of the soft and hard prompts")
    p.add_argument("--handoff", type=float, default=0.25,
                   help="completion attack: share of the sampling steps the base model runs")
    p.add_argument("--paraphrases", default=None, metavar="FILE",
                   help="paraphrase attack: a text file of prompts, one a line (default on the bundled base: its "
                        "held-out phrasings)")
    add_device(p)
    p.add_argument("--out", default=None,
                   help="output folder (report.json, report.txt, grid.png, images/, manifest.csv); default on a "
                        "base without judge: esd-attack-<concept>")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..attack import attack, is_bundled

    out = args.out or (None if is_bundled(args.base) else f"esd-attack-{slug(args.concept, 'concept')}")
    if out:
        check_folder(out, overwrite=args.overwrite)  # before minutes of attacks, not after
    report = attack(args.base, adapters=args.adapter, concept=args.concept, attacks=args.attacks,
                    budget=args.budget, n=args.n, steps=args.steps, guidance_scale=args.guidance_scale,
                    seed=args.seed, tokens=args.tokens, handoff=args.handoff, paraphrases=args.paraphrases,
                    device=args.device, dtype=args.dtype, force=args.force, progress=not args.quiet)
    print(report.table())
    if out:
        saved = report.save(out, overwrite=args.overwrite)
        print(f"wrote {saved}/report.json, report.txt, grid.png, images/ and manifest.csv")
    return 0
