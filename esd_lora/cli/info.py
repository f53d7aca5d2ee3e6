"""esd-lora info: print what an adapter file says about itself."""

from __future__ import annotations

import json

from ._common import add_command
from ._hub import add_endpoint

EXAMPLES = """\
  esd-lora info no-van-gogh.safetensors
  esd-lora info no-van-gogh.safetensors --json | jq .config.concepts
  esd-lora info hub:someone/no-van-gogh          # a Hub adapter (pulled into the cache, pinned to its commit)"""


def register(sub) -> None:
    p = add_command(sub, "info", help="print the metadata of an adapter file", examples=EXAMPLES, run=run,
                    models=False)
    p.add_argument("file", metavar="FILE", help="an esd-lora adapter (.safetensors), or a Hub adapter: "
                   "hub:OWNER/NAME[@REV] or OWNER/NAME")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    add_endpoint(p)


def run(args) -> int:
    from ..adapter import load_adapter
    from ..hub import resolve_adapter_source

    adapter = load_adapter(resolve_adapter_source(args.file, endpoint=args.endpoint))
    data = adapter.metadata.to_dict()
    if args.json:
        print(json.dumps({**data, "lora": adapter.lora_config}, indent=2, sort_keys=True))
        return 0
    config = data.pop("config")
    rows = [("file", str(adapter.path)), ("concepts", ", ".join(config.pop("concepts"))),
            ("method", config.pop("method")), ("rank / alpha", f"{config.pop('rank')} / {config.pop('alpha'):g}"),
            ("LoRA modules", str(len(adapter.lora_config.get("target_modules", [])))),
            ("parameters", f"{adapter.num_parameters:,}")]
    rows += [(k.replace("_", " "), _show(v)) for k, v in config.items()]
    rows += [(k.replace("_", " "), _show(v)) for k, v in data.items()]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def _show(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
