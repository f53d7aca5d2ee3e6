"""esd-lora push: upload an adapter to a Hugging Face Hub model repo, with a model card."""

from __future__ import annotations

from ..cards import DEFAULT_LICENSE
from ._common import add_command
from ._hub import add_endpoint

EXAMPLES = """\
  esd-lora push esd-red-esd-x-strict.safetensors me/bundled-no-red
  esd-lora push no-van-gogh.safetensors me/sd15-no-van-gogh --report eval/ --license creativeml-openrail-m
  esd-lora push no-red.safetensors me/no-red --revision dev --private --endpoint https://hub.example.com
      (the adapter goes up as pytorch_lora_weights.safetensors, so pipe.load_lora_weights("me/no-red") works;
       --report is a folder written by 'esd-lora evaluate --out'; files that did not change are not re-uploaded)"""


def register(sub) -> None:
    p = add_command(sub, "push", help="upload an adapter (and its evaluation) to a Hub model repo with a model card",
                    examples=EXAMPLES, run=run, models=False)
    p.add_argument("file", metavar="FILE", help="an esd-lora adapter (.safetensors)")
    p.add_argument("repo_id", metavar="REPO_ID", help="model repo OWNER/NAME (created if it does not exist)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="evaluation folder (report.json, grid.png) from 'esd-lora evaluate --out DIR'")
    p.add_argument("--revision", default=None, help="branch to push to (created from main if needed)")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--license", default=DEFAULT_LICENSE, help="license in the model card (follow the base model's)")
    add_endpoint(p)


def run(args) -> int:
    from ..hub import push_adapter

    url = push_adapter(args.file, args.repo_id, private=args.private, revision=args.revision,
                       endpoint=args.endpoint, report=args.report, license=args.license)
    print(f"pushed {args.file} to {args.repo_id}: {url}")
    return 0
