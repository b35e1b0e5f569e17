#!/usr/bin/env bash
# What only a GPU shows, in one run of under 10 minutes on one recent NVIDIA GPU:
#   bash benchmarks/gpu.sh [OUT_DIR]          (default: gpu-results; PYTHON=... picks the interpreter)
#   DEVICE=cpu MODE=--micro TIMING= bash benchmarks/gpu.sh /tmp/dry      (a dry run of the script itself, on a CPU)
# 1. the whole benchmark suite at the paper's shapes (ResNet-18 width 64, B = 128, M = 4), bf16-mixed,
#    channels-last: figures (a)-(j), (i) with BatchEnsemble's and the Deep Ensemble's peak test memory,
#    (j) every method's CIFAR-shaped training epoch in images/s;
# 2. figure (j) again with torch.compile, for the single model, BatchEnsemble and the Deep Ensemble;
# 3. DDP on the GPU: a digits BatchEnsemble fit and test through the CLI with --trainer.strategy ddp
#    (NCCL; one process per GPU, so one GPU runs one rank).
# Each step has its own time limit and writes its output as it goes, so a step that runs out of
# time loses only itself. Seven files land in OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu-results}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

{ nvidia-smi; "$python" -c "import torch, lightning; print('torch', torch.__version__, 'lightning', lightning.__version__, 'cuda', torch.cuda.is_available())"; } \
    >"$out/gpu_info.txt" 2>&1

# 21 pairs of at least 0.1 s per timing: about 4 s per figure after warm-up
device=${DEVICE:-cuda}
timing=${TIMING---pairs 21 --size min_time=0.1}
# shellcheck disable=SC2206  # MODE and TIMING are option lists
gpu_options=(--device "$device" --precision bf16-mixed --channels-last $timing ${MODE:-})
timeout 270 "$python" -m benchmarks.run "${gpu_options[@]}" --out "$out/gpu.json" 2>&1 | tee "$out/gpu.txt"
timeout 180 "$python" -m benchmarks.run "${gpu_options[@]}" --compile --only j --methods single,batch_ensemble,deep_ensemble \
    --out "$out/gpu_compile.json" 2>&1 | tee "$out/gpu_compile.txt"

ddp_root=$(mktemp -d)
{
    timeout 50 "$python" -m ensemble_lab fit --config configs/digits/batch_ensemble.yaml --trainer.accelerator "${device/cuda/gpu}" \
        --trainer.devices 1 --trainer.strategy ddp --trainer.max_epochs 5 --trainer.default_root_dir "$ddp_root" &&
    config=$(find "$ddp_root" -name config.yaml | head -n 1) &&
    timeout 40 "$python" -m ensemble_lab test --config "$config" --ckpt_path "$(dirname "$config")/checkpoints/last.ckpt" --overwrite true \
        --trainer.accelerator "${device/cuda/gpu}" --trainer.devices 1 --trainer.strategy ddp &&
    cp "$(find "$ddp_root" -name results.json | head -n 1)" "$out/ddp_results.json"
} >"$out/ddp.txt" 2>&1
echo "DDP fit + test exit status: $?" | tee -a "$out/ddp.txt"
