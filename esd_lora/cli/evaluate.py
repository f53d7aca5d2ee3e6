"""esd-lora evaluate: how often each concept is still generated, base vs base + adapters."""

from __future__ import annotations

from ..outputs import check_folder
from ._common import add_adapters, add_base, add_command, add_device

EXAMPLES = """\
  esd-lora evaluate --adapter esd-red-esd-x-strict.safetensors           # bundled base and judge
  esd-lora evaluate --adapter no-red.safetensors --adapter no-star.safetensors:0.8 --out report/
  esd-lora evaluate --base ./sd15 --prompts nudity.csv --adapter no-nudity.safetensors --out images/
      (a real model: writes images and manifest.csv for an external judge; the CSV has the columns
       prompt, evaluation_seed, case_number)"""


def register(sub) -> None:
    p = add_command(sub, "evaluate", help="measure erasure: the share of images still judged as each concept",
                    examples=EXAMPLES, run=run)
    add_base(p)
    add_adapters(p)
    p.add_argument("--concept", action="append", default=None, metavar="CONCEPT",
                   help="evaluate only these concepts (repeat); default: every concept the judge knows")
    p.add_argument("--n", type=int, default=32, help="images per concept and phrasing split")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--guidance-scale", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0, help="seed of the first image")
    p.add_argument("--fresh-base", action="store_true",
                   help="generate and judge the base's images too, even where the base folder stores its rates for "
                        "these settings (base_rates.json)")
    p.add_argument("--prompts", default=None, metavar="CSV",
                   help="a real model's prompts CSV: generate images and a manifest for an external judge")
    add_device(p)
    p.add_argument("--out", default=None, help="output folder (report.json, report.txt, grid.png)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from ..evaluate import evaluate, generate_for_judges

    if args.prompts:
        out = generate_for_judges(args.base, args.prompts, args.out or "esd-eval-images", adapters=args.adapter,
                                  steps=args.steps, guidance_scale=args.guidance_scale, device=args.device,
                                  dtype=args.dtype, overwrite=args.overwrite, force=args.force,
                                  progress=not args.quiet)
        print(f"wrote images and {out / 'manifest.csv'}: score them with your judge")
        return 0
    if args.out:
        check_folder(args.out, overwrite=args.overwrite)  # before minutes of generation, not after
    report = evaluate(args.base, adapters=args.adapter, concepts=args.concept, n=args.n, steps=args.steps,
                      guidance_scale=args.guidance_scale, seed=args.seed, device=args.device, dtype=args.dtype,
                      force=args.force, fresh_base=args.fresh_base, progress=not args.quiet)
    print(report.table())
    if args.out:
        out = report.save(args.out, overwrite=args.overwrite)
        print(f"wrote {out}/report.json, report.txt and grid.png")
    return 0
