"""esd-lora export: write an adapter in another tool's LoRA layout."""

from __future__ import annotations

from pathlib import Path

from ..merge import export_kohya
from ._common import add_command

EXAMPLES = """\
  esd-lora export no-van-gogh.safetensors --format kohya --out no-van-gogh-kohya.safetensors"""


def register(sub) -> None:
    p = add_command(sub, "export", help="write an adapter in the kohya layout (AUTOMATIC1111, ComfyUI)",
                    examples=EXAMPLES, run=run)
    p.add_argument("file", metavar="FILE", help="an esd-lora adapter (.safetensors)")
    p.add_argument("--format", default="kohya", choices=("kohya",), help="output key layout")
    p.add_argument("--out", default=None, help="output file (default: FILE with -kohya before .safetensors)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    source = Path(args.file)
    out = export_kohya(source, args.out or source.with_name(f"{source.stem}-kohya.safetensors"),
                       overwrite=args.overwrite)
    print(f"wrote {out} (kohya layout, true alpha kept)")
    return 0
