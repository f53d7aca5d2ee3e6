"""esd-lora merge: fuse a stack of erasures into the base and write a releasable checkpoint."""

from __future__ import annotations

from ._common import add_adapters, add_base, add_command
from ._hub import add_endpoint

EXAMPLES = """\
  esd-lora merge --adapter esd-red-esd-x-strict.safetensors --out bundled-no-red
  esd-lora merge --base ./sd15 --adapter no-van-gogh.safetensors --adapter no-monet.safetensors:0.8 \\
      --out sd15-erased --single-file sd15-erased.safetensors --dtype fp16
  esd-lora merge --adapter hub:me/bundled-no-red --out bundled-no-red --push me/bundled-no-red-merged"""


def register(sub) -> None:
    p = add_command(sub, "merge", help="fuse adapters into the base weights: a diffusers folder (+ single file)",
                    examples=EXAMPLES, run=run)
    add_base(p)
    add_adapters(p)
    p.add_argument("--out", required=True, help="output diffusers pipeline folder")
    p.add_argument("--single-file", default=None, metavar="FILE",
                   help="also write one .safetensors checkpoint in the original Stable Diffusion layout "
                        "(AUTOMATIC1111, ComfyUI, from_single_file)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "fp16", "bf16"),
                   help="dtype of the saved weights (the fusion is computed in fp32)")
    p.add_argument("--overwrite", action="store_true", help="replace --out / --single-file if they exist")
    p.add_argument("--push", default=None, metavar="REPO_ID", help="then upload the folder to this Hub model repo")
    p.add_argument("--private", action="store_true", help="with --push: create the repo private")
    add_endpoint(p)


def run(args) -> int:
    from ..hub import hub_endpoint
    from ..merge import merge

    out = merge(args.base, args.adapter, args.out, single_file=args.single_file, dtype=args.dtype,
                overwrite=args.overwrite, force=args.force, push=args.push, private=args.private,
                endpoint=args.endpoint)
    extra = f" and {args.single_file}" if args.single_file else ""
    print(f"wrote {out}{extra}: {args.base} with {len(args.adapter)} erasure(s) fused in ({args.dtype}); "
          f"see {out / 'README.md'}")
    if args.push:
        print(f"pushed {out} to {hub_endpoint(args.endpoint)}/{args.push}")
    return 0
