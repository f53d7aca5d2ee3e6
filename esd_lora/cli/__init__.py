"""The ``esd-lora`` command: one sub-command per file, each only parsing arguments and calling a verb."""

from __future__ import annotations

import argparse
import sys

from .. import __version__
from ..errors import EsdLoraError
from . import app, erase, evaluate, export, generate, info, merge
from . import pull, push, search
from . import erase_many
from . import attack

COMMANDS = (erase, generate, evaluate, merge, export, info, app, push, pull, search, erase_many, attack)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="esd-lora", description="Erase concepts from text-to-image diffusion models as LoRA adapters.",
        epilog="Run 'esd-lora COMMAND --help' for the options and examples of each command.")
    parser.add_argument("--version", action="version", version=f"esd-lora {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries(models=args.models)
    try:
        return args.run(args) or 0
    except EsdLoraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: nothing was written", file=sys.stderr)
        return 130


def _quiet_libraries(models: bool = True) -> None:
    """Keep the terminal for our own progress and results: library info/warning chatter is hidden (that of diffusers
    and transformers only for ``models`` commands, which import them anyway)."""
    import warnings

    from huggingface_hub.utils import logging as hub_logging

    if models:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        for logging in (diffusers_logging, transformers_logging):
            logging.set_verbosity_error()
            logging.disable_progress_bar()
    hub_logging.set_verbosity_error()  # retries and connection chatter: our own one-line errors say what to do
    warnings.filterwarnings("ignore", category=FutureWarning)


if __name__ == "__main__":
    sys.exit(main())
