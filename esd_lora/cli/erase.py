"""esd-lora erase: train an erasure adapter."""

from __future__ import annotations

from ..config import ADVERSARIAL_EVERY, LR_SCHEDULES, METHODS, PRESERVE_AT, SAMPLERS, EraseConfig
from ..errors import ConfigError
from ._common import add_base, add_command, add_device, slug

EXAMPLES = """\
  esd-lora erase "van gogh" --base ./stable-diffusion-v1-5 --out no-van-gogh.safetensors
  esd-lora erase nudity --base stable-diffusion-v1-5/stable-diffusion-v1-5 --method esd-u --iterations 1000
  esd-lora erase glasses --erase-from "a scientist" --base ./sd15 --eta 1.5
  esd-lora erase "claude monet" "pablo picasso" --base ./sd15    # one adapter, two concepts
  esd-lora erase red --adversarial    # harder to undo with soft prompts; check with 'esd-lora attack'"""


def register(sub) -> None:
    p = add_command(sub, "erase", help="erase one or more concepts into a LoRA adapter file",
                    examples=EXAMPLES, run=run)
    p.add_argument("concepts", nargs="+", metavar="CONCEPT", help=EraseConfig.help("concepts"))
    add_erase_options(p)
    p.add_argument("--out", default=None,
                   help="output .safetensors file (default: esd-<concept>-<method>.safetensors here)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_erase_options(p) -> None:
    """The training options of an erasure (base, method, ..., device): shared by erase and erase-many."""
    add_base(p)
    p.add_argument("--method", default=None, choices=list(METHODS),
                   help="; ".join(f"{k}: {v}" for k, v in METHODS.items()) + f" (default: {_default('method')})")
    for flag, name, kind in (("--iterations", "iterations", int), ("--lr", "lr", float), ("--rank", "rank", int),
                             ("--alpha", "alpha", float), ("--eta", "eta", float),
                             ("--start-guidance", "start_guidance", float), ("--ddim-steps", "ddim_steps", int),
                             ("--bank-size", "bank_size", int), ("--refresh-every", "refresh_every", int),
                             ("--refresh-batch", "refresh_batch", int),
                             ("--seed", "seed", int), ("--adversarial-every", "adversarial_every", int),
                             ("--adversarial-steps", "adversarial_steps", int)):
        p.add_argument(flag, dest=name, type=kind, default=None,
                       help=f"{EraseConfig.help(name)} (default: {_default(name)})")
    p.add_argument("--erase-from", default=None, metavar="TEXT", help=EraseConfig.help("erase_from"))
    p.add_argument("--context", dest="contexts", action="append", default=[], metavar="TEXT",
                   help=EraseConfig.help("contexts") + "; repeat for several (default: what the base recommends, "
                        "the bundled base: every scene of its world that names the concept, as 'dotted {} star')")
    p.add_argument("--no-contexts", action="store_true",
                   help="erase the concept as given only, without the contexts the base recommends")
    p.add_argument("--preserve", action="append", default=[], metavar="TEXT",
                   help=EraseConfig.help("preserve") + "; repeat for several (default: what the base recommends, "
                        "the bundled base: the other concepts' names)")
    p.add_argument("--no-preserve", action="store_true",
                   help="no preservation term, not even with the prompts the base recommends (plain ESD)")
    p.add_argument("--preserve-weight", type=float, default=None,
                   help=f"{EraseConfig.help('preserve_weight')} (default: {_default('preserve_weight')})")
    p.add_argument("--preserve-text-weight", type=float, default=None,
                   help=f"{EraseConfig.help('preserve_text_weight')} (default: {_default('preserve_text_weight')})")
    p.add_argument("--preserve-at", default=None, choices=PRESERVE_AT,
                   help=f"{EraseConfig.help('preserve_at')} (default: {_default('preserve_at')})")
    p.add_argument("--lr-schedule", default=None, choices=LR_SCHEDULES,
                   help=f"{EraseConfig.help('lr_schedule')} (default: {_default('lr_schedule')})")
    p.add_argument("--sample-with", default=None, choices=SAMPLERS,
                   help=f"{EraseConfig.help('sample_with')} (default: {_default('sample_with')})")
    p.add_argument("--adversarial", action="store_true",
                   help=f"adversarial erasure, as --adversarial-every {ADVERSARIAL_EVERY}: harder to undo with "
                        "soft prompts (check with 'esd-lora attack'), a few times slower")
    add_device(p)
    for name in ("gradient_checkpointing", "compile"):
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, action="store_true", default=None,
                       help=EraseConfig.help(name))


def erase_options(args) -> dict:
    """The training options set on the command line; the others come from the base's recommendations or defaults."""
    options = {name: getattr(args, name) for name in (
        "method", "iterations", "lr", "lr_schedule", "rank", "alpha", "eta", "start_guidance", "ddim_steps",
        "bank_size", "refresh_every", "refresh_batch", "seed", "erase_from", "contexts", "preserve",
        "preserve_weight", "preserve_text_weight", "preserve_at", "sample_with", "device", "dtype",
        "gradient_checkpointing", "compile", "adversarial_every", "adversarial_steps")}
    if args.adversarial and options["adversarial_every"] is None:
        options["adversarial_every"] = ADVERSARIAL_EVERY
    options = {k: v for k, v in options.items() if v is not None and v != []}  # what the user set
    for name, flag in (("contexts", "--context"), ("preserve", "--preserve")):
        if getattr(args, f"no_{name}"):
            if name in options:
                raise ConfigError(f"{flag} and --no-{name} contradict each other: give one of them")
            options[name] = []
    return options


def run(args) -> int:
    from ..erase import erase, make_config, recommended_start

    options = erase_options(args)
    config = make_config(args.base, args.concepts, **options)  # validates before the model is loaded
    recommended, path, group = recommended_start(args.base, args.concepts, options)
    used = {k: v for k, v in recommended.items() if k not in options}
    if used and not args.quiet:
        which = f" (with its settings for {', '.join(group)})" if group else ""
        print(f"using the settings {path} recommends for this base{which}: "
              f"{', '.join(f'{k}={_brief(v)}' for k, v in used.items())} (override with the options)")
    out = args.out or default_name(config)
    adapter = erase(args.base, config.concepts, config=config, out=out, overwrite=args.overwrite,
                    progress=not args.quiet)
    meta = adapter.metadata
    size_kb = adapter.path.stat().st_size / 1024
    print(f"wrote {adapter.path} ({size_kb:.0f} KB, {adapter.num_parameters:,} parameters): erased "
          f"{', '.join(config.concepts)} with {config.method} in {meta.wall_time_s:.1f} s, final loss "
          f"{meta.final_loss:.5f}")
    return 0


def _brief(value, most: int = 4) -> str:
    """A recommended value for one line: a long list as its first items and its length (in a dict too)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{key!r}: {_brief(item, most)}" for key, item in value.items()) + "}"
    if isinstance(value, list) and len(value) > most:
        return f"[{', '.join(map(repr, value[:most]))}, ... {len(value)} in all]"
    return str(value)


def _default(name: str):
    """The library default of an option; a base folder may recommend another (its esd_lora.json)."""
    value = EraseConfig.__dataclass_fields__[name].default
    return f"{value}, or what the base recommends"


def default_name(config: EraseConfig) -> str:
    return f"esd-{slug('-'.join(config.concepts), 'concept')}-{config.method}.safetensors"
