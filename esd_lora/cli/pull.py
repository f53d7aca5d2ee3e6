"""esd-lora pull: download an adapter from the Hub (pinned to a commit) and print its metadata."""

from __future__ import annotations

import argparse

from . import info
from ._common import add_command
from ._hub import add_endpoint

EXAMPLES = """\
  esd-lora pull me/bundled-no-red
  esd-lora pull me/bundled-no-red@v1 --out no-red.safetensors
  HF_HUB_OFFLINE=1 esd-lora pull me/bundled-no-red      # the cached copy, no network
      (commands that take adapters accept Hub repos directly: --adapter hub:me/bundled-no-red@v1:0.8)"""


def register(sub) -> None:
    p = add_command(sub, "pull", help="download an adapter from the Hub into the Hub cache and print its metadata",
                    examples=EXAMPLES, run=run, models=False)
    p.add_argument("source", metavar="REPO_ID[@REVISION]", help="model repo (hub: prefix optional), optional revision")
    p.add_argument("--out", default=None, help="also copy the adapter to this file")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--json", action="store_true", help="print the metadata as JSON")
    add_endpoint(p)


def run(args) -> int:
    from ..hub import pull_adapter

    path = pull_adapter(args.source, out=args.out, endpoint=args.endpoint, overwrite=args.overwrite)
    return info.run(argparse.Namespace(file=str(path), json=args.json, endpoint=args.endpoint))
