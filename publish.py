"""Publish the adapter catalog to a Hugging Face Hub namespace: one model repo per adapter, NAMESPACE/<name>.

    python publish.py NAMESPACE [--adapters adapters] [--dry-run] [--private] [--endpoint URL]

Each repo gets the adapter as pytorch_lora_weights.safetensors, a model card (training settings, the catalog's
metrics, the evaluation table) and the evaluation's report.json and grid.png. Every file is compared with the
repo's copy first (sha256 for LFS files, git blob id for the others): a second run uploads nothing, and --dry-run
lists what would change without creating or committing anything. The token comes from HF_TOKEN or
'hf auth login'; the endpoint from --endpoint, else HF_ENDPOINT, else https://huggingface.co.
"""

from __future__ import annotations

import argparse
import sys

from esd_lora.catalog import publish_catalog
from esd_lora.errors import EsdLoraError
from esd_lora.cards import DEFAULT_LICENSE


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("namespace", metavar="NAMESPACE", help="Hub user or organisation to publish under")
    parser.add_argument("--adapters", default="adapters", metavar="DIR", help="catalog folder with index.json")
    parser.add_argument("--dry-run", action="store_true", help="show what would change; create and upload nothing")
    parser.add_argument("--private", action="store_true", help="create new repos private")
    parser.add_argument("--license", default=DEFAULT_LICENSE, help="license in the model cards")
    parser.add_argument("--endpoint", default=None, metavar="URL", help="Hub endpoint (default: $HF_ENDPOINT)")
    args = parser.parse_args(argv)
    try:
        uploads = publish_catalog(args.adapters, args.namespace, dry_run=args.dry_run, private=args.private,
                                  endpoint=args.endpoint, license=args.license)
    except EsdLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    verb = "would upload" if args.dry_run else "uploaded"
    for upload in uploads:
        if not upload.changed:
            print(f"{upload.repo_id}: up to date")
        else:
            print(f"{upload.repo_id}: {verb} {', '.join(upload.changed)}" + (f" ({upload.url})" if upload.url else ""))
    changed = sum(bool(u.changed) for u in uploads)
    print(f"{len(uploads)} adapter(s): {changed} {'would change' if args.dry_run else 'changed'}, "
          f"{len(uploads) - changed} up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
