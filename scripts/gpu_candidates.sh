#!/usr/bin/env bash
# Candidate bundled bases on one GPU, in one command of at most 10 minutes: the judge of world version 6 trains on
# the CPU while three from-scratch builds on 16x16 latents train at once on the GPU (docs/bundled-base-builds.md,
# "On a GPU"); each build is then checked there (64 images per concept and split, seed 0, at most CHECK_S seconds)
# and the two with the highest worst concept (builds without a check last) are packed to come back:
# OUT/NAME.tar.part-aa, -ab (15 MB parts), OUT/judge-v6.safetensors and OUT/logs.tar (build logs, checks, the
# summary). At most 8 files, as a device run returns.
#
#   bash scripts/gpu_candidates.sh OUT [MINUTES [CHECK_S]]  # MINUTES: each build's budget (default 7.5); CHECK_S 90
#   cat OUT/NAME.tar.part-* | tar -x -C artifacts           # unpack one: artifacts/NAME, a pipeline folder
#
# A machine without diffusers (the H200's image) takes these as wheels, pure Python, fetched where pip works:
#   python3 -m pip download --no-deps -d .whl diffusers==0.42.1 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
# and installs them first: pip install --no-index --no-deps --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site:.
set -euo pipefail
out=${1:?usage: bash scripts/gpu_candidates.sh OUT [MINUTES [CHECK_S]]}
minutes=${2:-7.5}
check_s=${3:-90}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out" "$work/logs"
python3 -c "import diffusers, transformers, esd_lora.evaluate, esd_lora.bundled.judge" # fail here, not after the builds
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'"

OMP_NUM_THREADS=4 python3 -m esd_lora.bundled.judge --world-version 6 --out "$work/judge-v6.safetensors" \
    > "$work/logs/judge.log" 2>&1 &
judge_pid=$!
common=(--latent-size 16 --world-version 6 --device cuda --unet-steps 200000 --threads 3 --budget-minutes "$minutes")
declare -A variant=(
    [b256-over]="--seed 0 --batch-size 256 --lr 1e-3 --oversample dotted=1.5 square=1.3"
    [b512-over]="--seed 1 --batch-size 512 --lr 1.4e-3 --oversample dotted=1.5 square=1.3"
    [b256]="--seed 2 --batch-size 256 --lr 1e-3"
)
pids=()
for name in "${!variant[@]}"; do
    # shellcheck disable=SC2086  # the variant's options split into words
    python3 scripts/build_bundled_base.py --out "$work/$name" "${common[@]}" ${variant[$name]} \
        > "$work/logs/build-$name.log" 2>&1 &
    pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid" || echo "a build failed: see its log in logs.tar" >&2; done
wait "$judge_pid" || echo "the judge failed: see logs/judge.log; the builds come back unchecked" >&2

for name in "${!variant[@]}"; do
    [[ -f "$work/$name/model_index.json" ]] || continue
    OMP_NUM_THREADS=4 timeout "$check_s" python3 scripts/check_bundled_base.py --model "$work/$name" \
        --judge "$work/judge-v6.safetensors" --n 64 --seed 0 --device cuda --json "$work/logs/check-$name.json" \
        > "$work/logs/check-$name.log" 2>&1 &
done
wait  # every check (each ends by its timeout at the latest)

python3 - "$work" "${!variant[@]}" > "$work/logs/summary.txt" <<'PY'
import json, sys
from pathlib import Path

work, names = Path(sys.argv[1]), sys.argv[2:]
worst = {}  # a build's lowest rate over concepts and splits, and where; -1 for a build without a check
for name in names:
    if not (work / name / "model_index.json").is_file():
        continue
    check = work / "logs" / f"check-{name}.json"
    rates = json.loads(check.read_text()) if check.is_file() else {}
    worst[name] = min(((v, f"{c} {s}") for c, row in rates.items() for s, v in row.items()), default=(-1, "no check"))
for name, (rate, where) in sorted(worst.items(), key=lambda kv: -kv[1][0]):
    print(f"{name}: worst {where} {rate:.3f}")
PY
cat "$work/logs/summary.txt"
for name in $(head -n 2 "$work/logs/summary.txt" | cut -d: -f1); do
    tar -C "$work" -c "$name" | split -b 15M - "$out/$name.tar.part-"
done
cp "$work/judge-v6.safetensors" "$out/" || true
tar -C "$work" -cf "$out/logs.tar" logs
