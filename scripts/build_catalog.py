"""Build the catalog of erasures that ships in ``adapters/``: one adapter per concept of the bundled world.

    python scripts/build_catalog.py [--out adapters] [--concepts red star ...] [--n 16] [--seed 0]
    python scripts/build_catalog.py --table     # the catalog's index as the README's markdown table

Each concept is erased from the bundled base with the library defaults (the base's recommended settings), then
evaluated on every concept of the bundled world (training and held-out phrasings, ``--n`` images each, evaluation
seed ``--seed + 1``). Written per concept: ``esd-<concept>.safetensors`` and ``esd-<concept>/`` (report.json,
report.txt, grid.png); and ``index.json`` listing every adapter with its sha256 and metrics. Concepts whose
adapter and report already exist are kept (so an interrupted build resumes); ``--overwrite`` rebuilds them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import esd_lora  # noqa: E402
from esd_lora.adapter import base_fingerprint, file_sha256, load_adapter  # noqa: E402
from esd_lora.bundled import world  # noqa: E402
from esd_lora.families import load_pipeline  # noqa: E402
from esd_lora.outputs import atomic_path  # noqa: E402

INDEX = "index.json"


def metrics(report, concept: str) -> dict:
    """Efficacy on the erased concept and specificity on the others, from an evaluation report."""
    ratios = report.kept([concept])
    worst = min(ratios, key=ratios.get)
    return {"base_rate": round(report.rate(concept, "base"), 4),
            "erased_train": round(report.rate(concept, split="train"), 4),
            "erased_held_out": round(report.rate(concept, split="held-out"), 4),
            "others_kept_90": sum(r >= 0.9 for r in ratios.values()), "others": len(ratios),
            "worst_other": worst, "worst_other_ratio": round(ratios[worst], 4),
            "n": report.settings["n"]}


def entry(out: Path, name: str, seconds: float, measured: dict) -> dict:
    """The index entry of one adapter of the catalog."""
    path = out / f"{name}.safetensors"
    adapter = load_adapter(path)
    config = adapter.metadata.config
    return {"name": name, "file": path.name, "concepts": config.concepts, "method": config.method,
            "base": adapter.metadata.base_model, "base_fingerprint": adapter.metadata.base_fingerprint,
            "sha256": file_sha256(path), "size_bytes": path.stat().st_size,
            "iterations": config.iterations, "lr": config.lr, "rank": config.rank,
            "train_seconds": round(seconds, 1), "metrics": measured,
            "report": f"{name}/report.json", "grid": f"{name}/grid.png"}


def markdown_table(index: dict) -> str:
    """One row per adapter: base rate, erased rate per split, how many other concepts kept >= 90%, the worst."""
    lines = ["| adapter | base | erased (train / held-out) | others kept >= 90% of base | worst other | train s |",
             "| --- | --- | --- | --- | --- | --- |"]
    for e in index["adapters"]:
        m = e["metrics"]
        lines.append(f"| `{e['file']}` | {m['base_rate']:.0%} | {m['erased_train']:.0%} / {m['erased_held_out']:.0%} "
                     f"| {m['others_kept_90']} of {m['others']} | {m['worst_other']} {m['worst_other_ratio']:.0%} "
                     f"| {e['train_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="adapters")
    parser.add_argument("--concepts", nargs="+", default=world.all_concepts())
    parser.add_argument("--n", type=int, default=16, help="images per concept and phrasing split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--table", action="store_true", help="print the index as a markdown table and stop")
    args = parser.parse_args()
    if args.table:
        if not (Path(args.out) / INDEX).is_file():
            parser.error(f"{Path(args.out) / INDEX} does not exist: build the catalog first")
        print(markdown_table(json.loads((Path(args.out) / INDEX).read_text())))
        return
    unknown = [c for c in args.concepts if c not in world.all_concepts()]
    if unknown:
        parser.error(f"unknown concept(s) {', '.join(unknown)}: choose from {', '.join(world.all_concepts())}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline("bundled", device="cpu")
    index_path = out / INDEX
    index = json.loads(index_path.read_text()) if index_path.exists() else {"adapters": []}
    entries = {e["name"]: e for e in index["adapters"]}
    for concept in args.concepts:
        name = f"esd-{concept}"
        if name in entries and (out / name / "report.json").exists() and not args.overwrite:
            print(f"{name}: kept", flush=True)
            continue
        start = time.perf_counter()
        esd_lora.erase(pipe, concept, out=out / f"{name}.safetensors", overwrite=True, progress=False,
                       seed=args.seed)
        seconds = time.perf_counter() - start
        report = esd_lora.evaluate(pipe, adapters=[str(out / f"{name}.safetensors")], n=args.n, seed=args.seed + 1)
        report.save(out / name, overwrite=True)
        entries[name] = entry(out, name, seconds, metrics(report, concept))
        m = entries[name]["metrics"]
        print(f"{name}: {m['base_rate']:.0%} -> {m['erased_train']:.0%}/{m['erased_held_out']:.0%}, others kept "
              f"{m['others_kept_90']}/{m['others']}, worst {m['worst_other']} {m['worst_other_ratio']:.0%}, "
              f"{seconds:.0f} s", flush=True)
        order = world.all_concepts()
        index = {"base": "bundled", "base_fingerprint": base_fingerprint(pipe.unet),
                 "evaluation": {"n": args.n, "seed": args.seed + 1, "steps": 25, "guidance_scale": 5.0},
                 "adapters": sorted(entries.values(), key=lambda e: order.index(e["concepts"][0]))}
        with atomic_path(index_path) as tmp:
            tmp.write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
