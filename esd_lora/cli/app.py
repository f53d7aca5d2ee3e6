"""esd-lora app: serve the web app (erase, compare, stack, merge, evaluate, share) in a browser."""

from __future__ import annotations

import os

from ._common import add_command

EXAMPLES = """\
  esd-lora app                      # http://127.0.0.1:7860
  esd-lora app --port 8080
  esd-lora app --host 0.0.0.0       # reachable from other machines (a blank token field lends no login)
  python app.py --share             # the same, from the repository (also how a Hugging Face Space runs it)"""


def register(sub) -> None:
    p = add_command(sub, "app", help="serve the web app (needs the 'app' extra: pip install 'esd-lora[app]')",
                    examples=EXAMPLES, run=run)
    # A Hugging Face Space sets GRADIO_SERVER_NAME / GRADIO_SERVER_PORT: honour them as defaults.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
                   help="address to serve on")
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
                   help="port to serve on")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link")


def run(args) -> int:
    from ..app import launch  # gradio is an optional extra: imported only by this command

    launch(host=args.host, port=args.port, share=args.share)
    return 0
