"""esd-lora export: write an adapter in another tool's LoRA layout."""

from __future__ import annotations

from pathlib import Path

from ..outputs import check_output
from ._common import add_command
from ._hub import add_endpoint

EXAMPLES = """\
  esd-lora export no-van-gogh.safetensors --format kohya --out no-van-gogh-kohya.safetensors
  esd-lora export hub:someone/no-van-gogh        # writes no-van-gogh-kohya.safetensors here"""


def register(sub) -> None:
    p = add_command(sub, "export", help="write an adapter in the kohya layout (AUTOMATIC1111, ComfyUI)",
                    examples=EXAMPLES, run=run)
    p.add_argument("file", metavar="FILE", help="an esd-lora adapter (.safetensors), or a Hub adapter: "
                   "hub:OWNER/NAME[@REV] or OWNER/NAME")
    p.add_argument("--format", default="kohya", choices=("kohya",), help="output key layout")
    p.add_argument("--out", default=None, help="output file (default: FILE with -kohya before .safetensors; for a "
                                               "Hub adapter, NAME-kohya.safetensors in the current folder)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_endpoint(p)


def run(args) -> int:
    from ..hub import is_hub_source, parse_hub_source, resolve_adapter_source
    from ..merge import export_kohya

    if is_hub_source(args.file):
        out = args.out or f"{parse_hub_source(args.file)[0].split('/')[-1]}-kohya.safetensors"
        check_output(out, overwrite=args.overwrite)  # before the download
        source = resolve_adapter_source(args.file, endpoint=args.endpoint)
    else:
        source = Path(args.file)
        out = args.out or source.with_name(f"{source.stem}-kohya.safetensors")
    out = export_kohya(source, out, overwrite=args.overwrite)
    print(f"wrote {out} (kohya layout, true alpha kept)")
    return 0
