"""esd-lora erase-many: one adapter per line of a concepts file, spread over accelerate processes."""

from __future__ import annotations

from ._common import add_command
from .erase import add_erase_options, erase_options

EXAMPLES = """\
  esd-lora erase-many concepts.txt --out-dir adapters/ --base ./stable-diffusion-v1-5
  accelerate launch --num_processes 4 -m esd_lora erase-many concepts.txt --out-dir adapters/ --base ./sd15
  accelerate launch --multi_gpu --num_processes 2 -m esd_lora erase-many concepts.txt --device cpu  # 2 CPU processes

concepts.txt: one adapter per line; comma-separated concepts on one line go into one adapter:
  van gogh
  claude monet, pablo picasso
  # a comment"""


def register(sub) -> None:
    p = add_command(sub, "erase-many", help="erase each line of a concepts file into its own adapter, with the "
                    "lines spread over the processes of 'accelerate launch'", examples=EXAMPLES, run=run)
    p.add_argument("concepts_file", metavar="CONCEPTS.txt",
                   help="one adapter per line: a concept, or comma-separated concepts erased together; blank lines "
                        "and lines starting with # are skipped")
    add_erase_options(p)
    p.add_argument("--out-dir", default=".",
                   help="folder of the adapters, each written once as esd-<concepts>.safetensors (created if missing)")
    p.add_argument("--overwrite", action="store_true",
                   help="retrain adapters already in --out-dir (by default they are skipped, so a stopped run resumes)")
    p.add_argument("--quiet", action="store_true", help="no progress lines or bars")


def run(args) -> int:
    from accelerate import PartialState

    from ..erase_many import erase_many, summary

    outcomes = erase_many(args.base, args.concepts_file, args.out_dir, overwrite=args.overwrite,
                          progress=not args.quiet, **erase_options(args))
    state = PartialState()
    if state.is_main_process:
        print(summary(outcomes), flush=True)
    state.destroy_process_group()  # a clean exit of every process of a launched run
    return 1 if any(o.status == "failed" for o in outcomes) else 0
