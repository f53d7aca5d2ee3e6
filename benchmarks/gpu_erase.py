"""Seconds per iteration and peak GPU memory of `esd_lora.erase` at SD 1.5 and SDXL size, per dtype.

    python benchmarks/gpu_erase.py --iterations 10 [--models sd15 sdxl] [--dtypes fp32 fp16 bf16] [--json out.json]

Random weights of the released architectures (see random_models.py). Each run erases one concept with the
defaults (esd-x, rank 4, 50 DDIM steps, x_t sampled by the trained model); the same seed gives every dtype the
same stopping steps, so the figures are comparable. Also checks that the loss stays finite and the adapter
is saved in fp32.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import esd_lora  # noqa: E402
from esd_lora.adapter import load_adapter  # noqa: E402
from random_models import build  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def measure(pipe, dtype: str, iterations: int, device: str) -> dict:
    pipe.to(dtype=DTYPES[dtype])
    esd_lora.erase(pipe, "a warm up", iterations=2, ddim_steps=4, progress=False)  # kernels, allocator
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    adapter = esd_lora.erase(pipe, "a concept", iterations=iterations, progress=False)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        path = adapter.save(Path(tmp) / "a.safetensors")
        size_mb = path.stat().st_size / 2**20
        saved = load_adapter(path)
    return {"dtype": dtype, "s_per_it": seconds / iterations,
            "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"),
            "final_loss": adapter.metadata.final_loss, "finite": math.isfinite(adapter.metadata.final_loss),
            "adapter_mb": size_mb, "adapter_fp32": all(t.dtype == torch.float32 for t in saved.state_dict.values())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=["sd15", "sdxl"])
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "fp16", "bf16"], choices=list(DTYPES))
    parser.add_argument("--iterations", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="shrunken UNets: a smoke test of this script")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    overrides = {"block_out_channels": [32, 64, 64, 64], "attention_head_dim": 4} if args.tiny else None
    rows = []
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(f"device: {name}; torch {torch.__version__}; esd-lora {esd_lora.__version__}")
    print(f"{'model':6} {'dtype':5} {'s/it':>7} {'peak GiB':>9} {'adapter MB':>10} {'final loss':>11}  checks")
    for model in args.models:
        model_overrides = overrides
        if args.tiny and model == "sdxl":
            model_overrides = {"block_out_channels": [32, 64, 64], "attention_head_dim": [2, 4, 4],
                               "transformer_layers_per_block": [1, 1, 1]}
        pipe = build(model, device=args.device, unet_overrides=model_overrides)
        for dtype in args.dtypes:
            row = {"model": model, "device": name, **measure(pipe, dtype, args.iterations, args.device)}
            rows.append(row)
            checks = "ok" if row["finite"] and row["adapter_fp32"] else "FAILED"
            print(f"{model:6} {dtype:5} {row['s_per_it']:7.3f} {row['peak_gib']:9.2f} {row['adapter_mb']:10.2f} "
                  f"{row['final_loss']:11.5f}  {checks}", flush=True)
        del pipe
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
