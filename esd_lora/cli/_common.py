"""Argument helpers shared by the sub-commands."""

from __future__ import annotations

import argparse
import re


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults in the help (where there is one) and keeps the examples in the description as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or action.default == []:
            return action.help or ""
        return super()._get_help_string(action)


def add_command(sub, name: str, *, help: str, examples: str, run, models: bool = True) -> argparse.ArgumentParser:
    """``models=False``: the command loads no model (diffusers and transformers are then not imported to quiet
    their logging, seconds saved on 2 cores)."""
    parser = sub.add_parser(name, help=help, description=f"{help}\n\nexamples:\n{examples}",
                            formatter_class=HelpFormatter)
    parser.set_defaults(run=run, models=models)
    return parser


def slug(text: str, fallback: str) -> str:
    """A file-name-safe form of ``text`` for default output names."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or fallback


def add_base(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", default="bundled",
                        help="base model: 'bundled' (the small offline model shipped with esd-lora), a local "
                             "diffusers folder or a Hub id (safetensors weights only)")


def add_device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="torch device (default: cuda, else mps, else cpu)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                        help="dtype of the base model weights; auto = bf16/fp16 on CUDA, fp32 elsewhere")


def add_adapters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", action="append", default=[], metavar="FILE[:WEIGHT]",
                        help="an adapter file and optional weight; repeat to stack several")
    parser.add_argument("--force", action="store_true",
                        help="apply adapters trained on another base of the same architecture")
