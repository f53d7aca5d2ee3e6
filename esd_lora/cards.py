"""Model cards (README.md with YAML metadata) built with huggingface_hub's ModelCard."""

from __future__ import annotations

import os

from huggingface_hub import ModelCard, ModelCardData

TAGS = ["esd-lora", "concept-erasure", "diffusers", "text-to-image"]

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
    return not os.path.exists(name) and len(parts) == 2 and all(p and not p.startswith(".") for p in parts) and "\\" not in name
