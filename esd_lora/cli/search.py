"""esd-lora search: list the esd-lora adapters on the Hub."""

from __future__ import annotations

import json
import sys

from ._common import add_command
from ._hub import add_endpoint

EXAMPLES = """\
  esd-lora search                     # the most downloaded esd-lora adapters
  esd-lora search van-gogh --base stable-diffusion-v1-5/stable-diffusion-v1-5
  esd-lora search red --base bundled --json"""


def register(sub) -> None:
    p = add_command(sub, "search", help="list Hub adapters tagged esd-lora: concepts, base, method, downloads",
                    examples=EXAMPLES, run=run, models=False)
    p.add_argument("text", nargs="?", default=None, metavar="TEXT", help="only repos whose id contains TEXT")
    p.add_argument("--base", default=None, metavar="MODEL", help="only adapters trained on this base (id or 'bundled')")
    p.add_argument("--limit", type=int, default=50, help="at most this many results (after --base)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_endpoint(p)


def run(args) -> int:
    from ..hub import hub_endpoint, search_adapters

    # on stderr (stdout may be --json): an unreachable endpoint is retried for about half a minute before the error
    print(f"searching {hub_endpoint(args.endpoint)} ...", file=sys.stderr, flush=True)
    found = search_adapters(args.text, base=args.base, endpoint=args.endpoint, limit=args.limit)
    if args.json:
        print(json.dumps(found, indent=2))
        return 0
    if not found:
        print(f"no esd-lora adapters found on {hub_endpoint(args.endpoint)}")
        return 0
    rows = [("repo", "concepts", "method", "base", "downloads")]
    rows += [(f["repo_id"], ", ".join(f["concepts"]) or "-", f["method"] or "-", f["base"] or "-",
              str(f["downloads"])) for f in found]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    return 0
