"""esd-lora generate: the same prompt and seeds with and without erasures, side by side."""

from __future__ import annotations

from ..outputs import atomic_path, check_output
from ._common import add_adapters, add_base, add_command, add_device, slug

EXAMPLES = """\
  esd-lora generate "a painting by van gogh" --base ./sd15 --adapter no-van-gogh.safetensors
  esd-lora generate "a cat" --base ./sd15 --adapter no-cats.safetensors:0.7 --adapter no-dogs.safetensors \\
      --seed 42 --num-images 2 --out cats.png"""


def register(sub) -> None:
    p = add_command(sub, "generate", help="generate from the base and from base + adapters, side by side",
                    examples=EXAMPLES, run=run)
    p.add_argument("prompt", metavar="PROMPT", help="text prompt")
    add_base(p)
    add_adapters(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image j uses seed + j")
    p.add_argument("--num-images", type=int, default=4, help="images per row")
    p.add_argument("--steps", type=int, default=30, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--negative-prompt", default=None, help="negative prompt")
    add_device(p)
    p.add_argument("--out", default=None, help="output PNG (default: generate-<prompt>.png here)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    from ..generate import generate

    out = check_output(args.out or f"generate-{slug(args.prompt, 'prompt')}.png", overwrite=args.overwrite)
    comparison = generate(args.base, args.prompt, adapters=args.adapter, seed=args.seed,
                          num_images=args.num_images, steps=args.steps, guidance_scale=args.guidance_scale,
                          negative_prompt=args.negative_prompt, device=args.device, dtype=args.dtype,
                          force=args.force)
    with atomic_path(out) as tmp:
        comparison.grid().save(tmp, format="PNG")
    rows = f"top row base, bottom row {comparison.label}" if comparison.label else "base model only (no --adapter)"
    print(f"wrote {out}: '{args.prompt}', seeds {comparison.seeds[0]}..{comparison.seeds[-1]}, {rows}")
    return 0
