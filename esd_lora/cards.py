"""Model cards (README.md with YAML metadata) built with huggingface_hub's ModelCard.

``merged_card`` describes a checkpoint with erasures fused in; ``adapter_card`` describes one adapter pushed to
the Hub: what it erases, how it was trained, how well it erases (when an evaluation exists) and how to use it.
The adapter card's YAML carries an ``esd_lora`` block (concepts, method, base) that ``esd-lora search`` reads.
"""

from __future__ import annotations

import os

from huggingface_hub import ModelCard, ModelCardData

TAGS = ["esd-lora", "concept-erasure", "diffusers", "text-to-image"]
DEFAULT_LICENSE = "mit"  # of the cards esd-lora writes; a card should follow its base model's license
ADAPTER_FILE = "pytorch_lora_weights.safetensors"  # the file name diffusers' load_lora_weights(repo_id) looks for

MERGED_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ base_name }} with {{ erasures | length }} concept erasure(s) fused into its UNet weights by
[esd-lora](https://github.com/esd-lora/esd-lora) (ESD: Erasing Concepts from Diffusion Models, trained as LoRA
adapters). The erasures are part of the weights: there is no adapter to unload.

| concepts | method | weight | iterations | eta | rank / alpha | adapter sha256 |
|---|---|---|---|---|---|---|
{% for e in erasures -%}
| {{ e.concepts | join(", ") }} | {{ e.method }} | {{ e.weight }} | {{ e.iterations }} | {{ e.eta }} | {{ e.rank }} / {{ e.alpha }} | `{{ e.sha256 }}` |
{% endfor %}
Merged in {{ dtype }}{% if single_file %}; the single-file checkpoint `{{ single_file }}` holds the same weights in
the original Stable Diffusion layout{% endif %}.

## Use

```python
from diffusers import DiffusionPipeline

pipe = DiffusionPipeline.from_pretrained("{{ repo_hint }}")
image = pipe("{{ example_prompt }}").images[0]
```
"""


def merged_card(*, base_id: str, erasures: list[dict], dtype: str, single_file: str | None,
                repo_hint: str) -> ModelCard:
    """The card of a merged checkpoint: which erasures are baked in, with their adapters' sha256."""
    concepts = [c for e in erasures for c in e["concepts"]]
    data = ModelCardData(base_model=base_id if _is_hub_id(base_id) else None, library_name="diffusers",
                         tags=TAGS + ["merged"], pipeline_tag="text-to-image")
    return ModelCard.from_template(
        data, template_str=MERGED_TEMPLATE, title=f"{base_id} without {', '.join(concepts)}", base_name=base_id,
        erasures=erasures, dtype=dtype, single_file=single_file, repo_hint=repo_hint,
        example_prompt=f"a picture of {concepts[0]}" if concepts else "a picture")


def _is_hub_id(name: str) -> bool:
    """``owner/name`` with no path-like parts: what the Hub's ``base_model`` field accepts."""
    parts = name.split("/")
    return (not os.path.exists(name) and len(parts) == 2 and "\\" not in name
            and all(p and not p.startswith(".") for p in parts))


ADAPTER_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

An [esd-lora](https://github.com/esd-lora/esd-lora) adapter that erases **{{ concepts | join(", ") }}** from
{{ base_name }}: ESD (Erasing Concepts from Diffusion Models) fine-tuning of the UNet, trained as a LoRA. Loaded,
the model stops drawing the concept; unloaded (or at weight 0), the base model is unchanged.

## Training

| setting | value |
|---|---|
{%- for name, value in settings %}
| {{ name }} | {{ value }} |
{%- endfor %}
{%- if evaluation %}

## Evaluation

Share of images the judge labels as each concept, from the base model and from base + this adapter (same
prompts and seeds; {{ evaluation_note }}):

| concept | dimension | split | base | with adapter | change |
|---|---|---|---|---|---|
{%- for row in evaluation %}
| {{ row | join(" | ") }} |
{%- endfor %}
{%- endif %}
{%- if metrics %}

| metric | value |
|---|---|
{%- for name, value in metrics %}
| {{ name }} | {{ value }} |
{%- endfor %}
{%- endif %}
{%- if grid %}

![base (left) and with the adapter (right), same prompts and seeds]({{ grid }})
{%- endif %}
{%- if report %}

The full evaluation is in [`{{ report }}`]({{ report }}).
{%- endif %}

## Use

With diffusers:

```python
from diffusers import DiffusionPipeline

{{ base_load }}
pipe.load_lora_weights("{{ repo_id }}")  # reads {{ adapter_file }}
image = pipe("{{ prompt }}").images[0]
```

With esd-lora (`pip install esd-lora`):

```bash
esd-lora pull {{ repo_id }}
esd-lora generate "{{ prompt }}" --base {{ base_cli }} --adapter hub:{{ repo_id }}
```

`{{ adapter_file }}` sha256: `{{ sha256 }}`
"""


_BUNDLED_LOAD = "import esd_lora\n\npipe = DiffusionPipeline.from_pretrained(esd_lora.BUNDLED_BASE)"


def adapter_card(adapter, *, repo_id: str, sha256: str, license: str, report: dict | None = None,
                 report_path: str | None = None, grid: str | None = None, metrics: dict | None = None) -> ModelCard:
    """The card of an erasure adapter on the Hub.

    ``report`` is an evaluation report (``report.json`` as written by ``esd-lora evaluate --out``) and
    ``report_path`` / ``grid`` the paths of its JSON and image in the repo; ``metrics`` free-form numbers (the
    catalog's). ``adapter`` is an :class:`~esd_lora.adapter.Adapter`.
    """
    meta, config = adapter.metadata, adapter.metadata.config
    base = meta.base_model
    data = ModelCardData(
        base_model=base if _is_hub_id(base) else None, library_name="diffusers", license=license,
        tags=TAGS[:2] + ["lora"] + TAGS[2:], pipeline_tag="text-to-image",
        esd_lora={"concepts": config.concepts, "method": config.method, "base_model": base,
                  "base_fingerprint": meta.base_fingerprint, "family": meta.family, "sha256": sha256})
    settings = [("concepts", ", ".join(config.concepts)), ("method", config.method),
                ("erase from", config.erase_from or "- (unconditional)"),
                ("contexts", ", ".join(config.contexts) or "-"),
                *([("contexts of one concept", "; ".join(f"{concept}: {', '.join(contexts)}" for concept, contexts
                                                          in config.concept_contexts.items()))]
                  if config.concept_contexts else []),
                ("preserved", ", ".join(config.preserve) or "-"),
                ("preservation", f"weight {config.preserve_weight:g}, at x_t of "
                 + ("the preserved prompts' own trajectories" if config.preserve_at == "own" else "the erased concept")
                 if config.preserve else "-"),
                ("key / value preservation", f"weight {config.preserve_text_weight:g}"
                 if config.preserve_text_weight else "-"), ("iterations", config.iterations),
                ("learning rate", f"{config.lr:g}"), ("rank / alpha", f"{config.rank} / {config.alpha:g}"),
                ("eta (negative guidance)", f"{config.eta:g}"), ("start guidance", f"{config.start_guidance:g}"),
                ("DDIM steps", config.ddim_steps), ("seed", config.seed), ("final loss", f"{meta.final_loss:.5g}"),
                ("training time", f"{meta.wall_time_s:.0f} s"), ("base model", f"{base} ({meta.family})"),
                ("base fingerprint", f"`{meta.base_fingerprint}`"), ("esd-lora", meta.esd_lora_version)]
    rows = [(r["concept"], r["dimension"], r["split"], f"{r['base']:.0%}", f"{r['adapted']:.0%}",
             f"{100 * (r['adapted'] - r['base']):+.0f} pts") for r in (report or {}).get("rows", [])]
    evaluated = (report or {}).get("settings", {})
    return ModelCard.from_template(
        data, template_str=ADAPTER_TEMPLATE, title=f"{base} without {', '.join(config.concepts)}",
        concepts=config.concepts, base_name=f"`{base}`", settings=settings, evaluation=rows,
        evaluation_note=f"{evaluated.get('n', '?')} images per concept and split, "
                        f"{evaluated.get('steps', '?')} steps",
        metrics=sorted((metrics or {}).items()), grid=grid, report=report_path, repo_id=repo_id,
        adapter_file=ADAPTER_FILE, sha256=sha256, prompt=f"a picture of {config.concepts[0]}",
        base_cli=base, base_load=(_BUNDLED_LOAD if base == "bundled" else
                                  f'pipe = DiffusionPipeline.from_pretrained("{base}")'))
