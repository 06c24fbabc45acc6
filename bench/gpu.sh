#!/usr/bin/env bash
# Stage throughput on one NVIDIA GPU: every stage on a random ~0.63B Llama (`random-llama-0.6b`, bench/model.py, built
# locally from random weights and the project's GPT-2 + ChatML tokenizer: no download), full fine-tuning in bf16,
# in three layouts: one plain process, DeepSpeed ZeRO-2 and ZeRO-3 (accelerate launch, one process). Each layout
# is one `python -m bench stages` run (tokens/s and MFU against the GPU's measured bf16 matmul peak, beside plain
# TRL where TRL has the trainer), with its result.json and table under --out/<layout>/.
#
#   bash bench/gpu.sh [--dry-run] [--steps 8] [--stages sft,reward,dpo,ppo,grpo] [--layouts single,zero2,zero3]
#                     [--out runs/bench/gpu] [--python .venv/bin/python]
#
# --dry-run prints the commands (each on a line starting with "+ ") without running them or looking for a GPU.
set -euo pipefail

cd "$(dirname "$0")/.."

python_bin=${PYTHON:-python}
steps=8
stages=sft,reward,dpo,ppo,grpo
layouts=single,zero2,zero3
out=runs/bench/gpu
dry_run=0

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) dry_run=1; shift ;;
        --steps) steps=$2; shift 2 ;;
        --stages) stages=$2; shift 2 ;;
        --layouts) layouts=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --python) python_bin=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
    esac
done

export HF_HUB_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 WANDB_MODE=offline TOKENIZERS_PARALLELISM=false

run() {
    echo "+ $*"
    if [[ $dry_run -eq 0 ]]; then
        "$@"
    fi
}

if [[ $dry_run -eq 0 ]]; then
    if ! gpus=$(nvidia-smi -L 2>/dev/null) || [[ -z $gpus ]]; then
        echo "bench/gpu.sh: no NVIDIA GPU found (nvidia-smi -L); --dry-run prints the commands" >&2
        exit 1
    fi
    if [[ $(wc -l <<<"$gpus") -gt 1 && -z ${CUDA_VISIBLE_DEVICES:-} ]]; then
        echo "bench/gpu.sh: several GPUs; measuring on GPU 0 (set CUDA_VISIBLE_DEVICES to choose)" >&2
        export CUDA_VISIBLE_DEVICES=0
    fi
    "$python_bin" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA device")'
fi

run "$python_bin" -m bench.model prepare

IFS=, read -r -a layout_list <<<"$layouts"
for layout in "${layout_list[@]}"; do
    case "$layout" in
        single) launch=() ;;
        zero2) launch=(--accelerate-config configs/accelerate/zero2.yaml --num-processes 1) ;;
        zero3) launch=(--accelerate-config configs/accelerate/zero3.yaml --num-processes 1) ;;
        *) echo "bench/gpu.sh: unknown layout $layout (single, zero2, zero3)" >&2; exit 2 ;;
    esac
    run "$python_bin" -m bench stages --models llama0.6b --stages "$stages" --steps "$steps" --plain-trl \
        "${launch[@]}" --out "$out/$layout"
done
