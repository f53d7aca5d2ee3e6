"""Options shared by the sub-commands that talk to the Hugging Face Hub."""

from __future__ import annotations

import argparse


def add_endpoint(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--endpoint", default=None, metavar="URL",
                        help="Hub endpoint, e.g. a private Hub (default: $HF_ENDPOINT, else https://huggingface.co); "
                             "the token comes from $HF_TOKEN or 'hf auth login'")
