"""Measure how well the bundled base model renders each concept of the bundled world.

For every concept (5 shapes, 4 colours, 4 patterns) and both phrasing splits of
``esd_lora.bundled.world.prompts_for`` ("train" and "held-out"), images are generated with the pipeline's own
DDIM sampler and labelled by the bundled judge (through ``esd_lora.evaluate``, without adapters); the share
judged as the prompted concept is printed as a table. The bar of the project: >= 95% for every concept.

Usage::

    python scripts/check_bundled_base.py --n 64 --steps 25 --guidance 5 [--model DIR] [--json F] [--grid F] [--card]
    # a model built on another world version, judged by a judge of that version
    python scripts/check_bundled_base.py --model DIR --judge judge-v3.safetensors --n 32

``--card`` (re)writes the model card ``README.md`` of the model folder with the measured table and the build facts
of its ``build_info.json``.
``--store-rates`` adds the measured rates to the model folder's ``base_rates.json``: ``esd-lora evaluate`` reads
them instead of generating the base's images when the weights, its settings and the judge match
(``esd_lora.base_rates``; with ``--judge``, a measurement for that judge, which evaluate reads inside
``esd_lora.bundled.judge.weights_from``, as ``benchmarks/erase_quality.py --judge`` does).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from huggingface_hub import ModelCard, ModelCardData  # noqa: E402

from esd_lora import BUNDLED_BASE, evaluate  # noqa: E402
from esd_lora.base_rates import store_rates  # noqa: E402
from esd_lora.bundled.judge import WEIGHTS_PATH, weights_file, weights_from  # noqa: E402
from esd_lora.families import load_pipeline, recommended_options  # noqa: E402

CARD = """---
{{ card_data }}
---

# esd-lora bundled base model (concept world, 32x32)

A small text-to-image model with the Stable Diffusion architecture, trained from scratch and offline on the
synthetic concept world of `esd_lora/bundled/world.py`: 5 shapes x 4 colours x 4 patterns (the patterns play the
role of artistic styles), 32x32 RGB. It ships with esd-lora so that concept erasure runs, and is measured, on any
CPU without downloading anything. `StableDiffusionPipeline.from_pretrained(esd_lora.BUNDLED_BASE)` loads it
(no safety checker); it generates 32x32 images.

| part | class | parameters |
| --- | --- | --- |
{% for part in parts -%}
| {{ part.name }} | {{ part.desc }} | {{ part.params }} |
{% endfor %}
fp32 safetensors, {{ size_mb }} MB in all.

## Training

`python scripts/build_bundled_base.py` (seeded), in {{ info.stages | length }} stage(s), {{ info.build_minutes }}
minutes in all, {{ info.unet_steps }} UNet steps (a stage without a device ran on 2 CPU cores, batch 64):

{% for st in info.stages -%}
- {% if st.resumed_from %}`--resume` (seed {{ st.seed }}, lr {{ st.lr }}{% if st.oversample %}, `--oversample` {{ st.oversample }}{% endif %}){% else %}from scratch (seed {{ st.seed }}, lr {{ st.lr }}): VAE {{ st.vae_steps }} steps, text encoder pretraining {{ st.text_steps }} steps{% endif %}, world version {{ st.world_version | default(1) }}{% if st.judge_accuracy_on_vae_reconstructions %} (judge{% if st.judge %} `{{ st.judge }}`{% endif %} accuracy on the VAE's reconstructions of it: {{ st.judge_accuracy_on_vae_reconstructions }}){% endif %}, UNet {{ st.unet_steps }} steps{% if st.batch_size %} of batch {{ st.batch_size }}{% endif %}, {{ st.minutes }} min{% if st.device %} on {{ st.device }}{% if st.device == 'cpu' %} ({{ st.threads }} threads){% endif %}{% endif %}
{% endfor %}
Each stage renders its training images from the world version it names (`--world-version`; the versions differ
only in how patterns are drawn: `world.PATTERN_GEOMETRY`, and `world.WORLD_VERSION` for what each is).

The text encoder is first taught to write the caption's shape / colour / pattern into every position from the end
token on (linear heads, then thrown away) and then frozen: trained jointly from scratch, the ~70 padding positions
stayed alike for every prompt and the UNet learned to ignore the text. Captions come from the *train* templates
with all synonyms; 10% are empty, for classifier-free guidance.

## Quality

Share of generated images that the bundled judge labels as the prompted concept (DDIM {{ steps }} steps, guidance
{{ guidance }}, {{ n }} images per concept and phrasing split; `python scripts/check_bundled_base.py --n {{ n }} --seed
{{ seed }}`).
Held-out phrasings use templates the model never saw, or held-out synonyms.

| concept | train phrasings | held-out phrasings |
| --- | --- | --- |
{% for c, s in scores.items() -%}
| {{ c }} | {{ "%.0f" | format(100 * s["train"]) }}% | {{ "%.0f" | format(100 * s["held-out"]) }}% |
{% endfor %}

## Erasure settings

`esd_lora.json` holds the erasure settings esd-lora uses on this base unless told otherwise: a higher learning
rate than Stable Diffusion needs, cross-attention keys and values only at half the negative guidance, the other
concepts' names to preserve (`anchors`, also held on the text side), and the world's scenes (`scenes`), from which an
erasure takes its contexts (those naming the erased concept).{% if groups %} `by_concept` gives some concepts settings
of their own on top of those: {% for g in groups %}{{ g.erase }} for {{ g.concepts | join(", ") }}{% if not loop.last %};
{% endif %}{% endfor %}.{% endif %}

## Stored rates

`base_rates.json` holds this model's own rates per concept and phrasing split, per measured setting
(`scripts/check_bundled_base.py --store-rates`), with a digest of the weights they were measured on: evaluating
adapters on this model at such a setting reads the base's column from it instead of generating the base's images
again (`esd-lora evaluate --fresh-base` generates them).

Licence: MIT. Trained only on procedurally generated images.
"""


def write_card(model: Path, scores: dict, args: argparse.Namespace) -> None:
    """Write the model card (README.md) of ``model`` with ``scores`` and the facts of its build_info.json."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None, feature_extractor=None,
                                                   requires_safety_checker=False)
    count = lambda m: f"{sum(p.numel() for p in m.parameters()) / 1e6:.2f} M"  # noqa: E731
    unet, vae = pipe.unet.config, pipe.vae.config
    parts = [
        {"name": "autoencoder", "desc": f"`AutoencoderKL`, 32x32x3 -> {unet.sample_size}x{unet.sample_size}x"
                                        f"{vae.latent_channels}", "params": count(pipe.vae)},
        {"name": "denoiser", "desc": f"`UNet2DConditionModel`, blocks {tuple(unet.block_out_channels)}, "
                                     f"cross-attention dim {unet.cross_attention_dim}", "params": count(pipe.unet)},
        {"name": "text encoder", "desc": f"`CLIPTextModel`, {pipe.text_encoder.config.num_hidden_layers} layers, "
                                         f"width {pipe.text_encoder.config.hidden_size}", "params": count(pipe.text_encoder)},
        {"name": "tokenizer", "desc": f"`CLIPTokenizer` built offline, {len(pipe.tokenizer)} tokens, 77 positions", "params": "-"},
        {"name": "scheduler", "desc": "`DDIMScheduler`, 1000 linear betas, epsilon prediction", "params": "-"},
    ]
    size = sum(f.stat().st_size for f in model.rglob("*.safetensors")) / 1e6
    data = ModelCardData(library_name="diffusers", license="mit", pipeline_tag="text-to-image",
                         tags=["esd-lora", "concept-erasure", "synthetic"])
    card = ModelCard.from_template(data, template_str=CARD, parts=parts, size_mb=f"{size:.0f}", scores=scores,
                                   info=json.loads((model / "build_info.json").read_text()), n=args.n,
                                   steps=args.steps, guidance=args.guidance, seed=args.seed,
                                   groups=recommended_options(model)[0].get("by_concept", []))
    card.save(model / "README.md")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=BUNDLED_BASE)
    p.add_argument("--n", type=int, default=64, help="images per concept and split")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="also write the scores to this file")
    p.add_argument("--grid", type=Path, default=None, help="also save a PNG with samples of every concept")
    p.add_argument("--card", action="store_true", help="(re)write the model folder's README.md with these scores")
    p.add_argument("--store-rates", action="store_true",
                   help="add these rates to the model folder's base_rates.json, which esd-lora evaluate reads "
                        "instead of generating the base's images at the same settings and with the same judge "
                        "(--device cpu)")
    p.add_argument("--judge", type=weights_file, default=None, metavar="FILE",
                   help="judge with these weights, for a model built on another world version (python -m "
                        "esd_lora.bundled.judge --world-version V --out FILE; default: the bundled judge)")
    args = p.parse_args()
    if args.judge is not None and args.card:
        p.error("--card keeps the bundled judge's figures; leave out --judge")
    if args.store_rates and args.device != "cpu":
        p.error("--store-rates: stored base rates are measured on the CPU (leave out --device)")
    start = time.time()
    pipe = load_pipeline(args.model, device=args.device, dtype="fp32")
    with weights_from(args.judge or WEIGHTS_PATH):
        report = evaluate(pipe, n=args.n, steps=args.steps, guidance_scale=args.guidance, seed=args.seed)
    scores = report.base_rates()
    print(f"model {args.model}: DDIM {args.steps} steps, guidance {args.guidance}, {args.n} images per concept "
          "and split")
    print("| concept | train phrasings | held-out phrasings |\n| --- | --- | --- |")
    for concept, s in scores.items():
        print(f"| {concept} | {s['train']:.1%} | {s['held-out']:.1%} |")
    print(f"| **minimum** | {min(s['train'] for s in scores.values()):.1%} | "
          f"{min(s['held-out'] for s in scores.values()):.1%} |")
    print(f"took {time.time() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(scores, indent=2))
    if args.grid:
        report.grid(per_concept=8).save(args.grid)
    if args.card:
        write_card(Path(args.model), scores, args)
        print(f"wrote {Path(args.model) / 'README.md'}")
    if args.store_rates:
        print(f"stored the rates in {store_rates(pipe, report)}")


if __name__ == "__main__":
    main()
