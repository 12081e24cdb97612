#!/usr/bin/env bash
# One prepared session on a lent GPU machine (../shared/gpu/README.md): every GPU check and benchmark this project
# owes, in order of importance, each under its own time limit and all under one deadline, with every log written
# as it goes (so a part that runs out of time still leaves what it printed): $OUT/session.txt and $OUT/logs.tgz.
#
#   ../shared/gpu/prepare.sh     # here, once per checkout (EXTRA_WHEELS="pytest-xdist==3.8.0 execnet==2.1.2")
#   device run, carry [".device"]:  . .device/on-device.sh; bash scripts/gpu_session.sh 560 [PARTS]
#
# Exits 2 at once without a GPU, 1 if any part failed or ran out of time (the log says which), else 0.
# $1: seconds for the whole session (default 560); PARTS (default all, in this order):
#   tests   python -m pytest -m gpu (GPU-marked tests: HF equality on 1 and 2 stages, graphs, Triton kernels)
#   bench1b scripts.bench_gpu on the Llama-3.2-1B shape (pp-runtime vs HF generate vs roofline, GPU busy, steps)
#   chunk   scripts/chunk_cost.py gpu: prefill chunk time against prefix to 32k, Llama-3.1-8B shape (issue 17),
#           with CUDA graphs as the runtime runs (chunk) and eager (chunk_eager)
#   bench8b scripts.bench_gpu on the Llama-3.1-8B shape, no HF baseline
#   hops    scripts/bench_attribution.py: 2 stages sharing the GPU over host-staged gloo, hop per micro-batch
#   depth2  bench1b's pp-runtime run with two micro-batches in flight on the one stage (no HF, no steps)
#   trace1b bench1b's pp-runtime run with the tracer on: the stage's idle between micro-batches (bubbles.json)
#   profile scripts.gpu_profile_step: the kernels of one step per shape (Llama-3.2-1B shape, eager)
set -uo pipefail
if ! command -v nvidia-smi >/dev/null || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "gpu_session.sh: no NVIDIA GPU here (nvidia-smi finds none); run it on the lent GPU machine" >&2
    exit 2
fi
budget=${1:-560}; shift || true
failed=()
parts=${*:-tests bench1b chunk bench8b hops}
OUT=${OUT:-/tmp/gpu_session}; mkdir -p "$OUT"
LOGS=/tmp/gpu_session_logs; rm -rf "$LOGS"; mkdir -p "$LOGS"  # a device run returns at most 8 files: tarred at the end
end=$(( $(date +%s) + budget ))
log="$OUT/session.txt"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; } >>"$log" 2>&1

run_part() {  # name, most seconds, command...
    local name=$1 most=$2; shift 2
    local left=$(( end - $(date +%s) - 5 ))
    (( left < most )) && most=$left
    if (( most < 20 )); then echo "== $name: skipped, ${left}s left" | tee -a "$log"; return; fi
    echo "== $name (at most ${most}s): $*" | tee -a "$log"
    local t0; t0=$(date +%s)
    timeout -k 5 "$most" "$@" >"$LOGS/$name.txt" 2>&1
    local rc=$?
    echo "== $name: rc $rc after $(( $(date +%s) - t0 ))s" | tee -a "$log"
    (( rc == 0 )) || failed+=("$name")
    tail -n 4 "$LOGS/$name.txt" | sed 's/^/   /' | tee -a "$log"
}

make_model() {  # shape, layers, dir: a random-weight bf16 model of a simulator preset's shape
    python3 - "$@" <<'EOF'
import sys, torch
from transformers import AutoModelForCausalLM
from pp_runtime.sim.hardware import MODEL_SHAPES
cfg = MODEL_SHAPES[sys.argv[1]].to_hf_config(num_layers=int(sys.argv[2]), max_position_embeddings=8192)
cfg.bos_token_id, cfg.eos_token_id = 1, 2
torch.manual_seed(0)
with torch.device("cuda"):
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(sys.argv[3])
EOF
}

# The roofline's peaks: the datasheet's for an H200 (989 TFLOP/s dense bf16, 4.8 TB/s), else bench_gpu's H100.
roof=""
nvidia-smi -L | grep -q H200 && roof="--peak-tflops 989 --bandwidth-tbs 4.8"
for part in $parts; do
    case $part in
    tests) run_part tests 130 python3 -m pytest -q -m gpu -p xdist -n 4 -o addopts= --continue-on-collection-errors \
               tests/test_gpu.py tests/test_attention_backends.py tests/test_cuda_graphs.py tests/test_stage_inputs.py \
               tests/test_triton_attention.py ;;
    bench1b) run_part bench1b 150 python3 -m scripts.bench_gpu --presets llama-3.2-1b --out /tmp/bench $roof
             cp /tmp/bench/bench_gpu.json "$LOGS/bench1b.json" 2>/dev/null ;;
    chunk) run_part chunk 60 python3 scripts/chunk_cost.py gpu --shape llama-3.1-8b --max-prefix 32768 --chunk 512 \
               --budget 1024 --gpu h200
           run_part chunk_eager 40 python3 scripts/chunk_cost.py gpu --shape llama-3.1-8b --max-prefix 32768 \
               --chunk 512 --budget 1024 --gpu h200 --eager ;;
    bench8b) run_part bench8b 130 python3 -m scripts.bench_gpu --presets llama-3.1-8b --skip-hf --out /tmp/bench8 $roof
             cp /tmp/bench8/bench_gpu.json "$LOGS/bench8b.json" 2>/dev/null ;;
    hops) make_model llama-3.2-1b 16 /tmp/m1b >>"$log" 2>&1
          run_part hops 90 python3 scripts/bench_attribution.py --stages 2 --workloads prefill \
              --policies sarathi,orca --repeats 1 --num-requests 64 --token-budget 512 \
              model.path=/tmp/m1b device=cuda dtype=bfloat16 pipeline.transport=gloo ;;
    depth2) run_part depth2 60 python3 -m scripts.bench_gpu --presets llama-3.2-1b --skip-hf --skip-steps --out /tmp/bd \
                $roof pipeline.num_microbatches=2 ;;
    trace1b) run_part trace1b 60 python3 -m scripts.bench_gpu --presets llama-3.2-1b --skip-hf --skip-steps --out /tmp/bt \
                 $roof tracer.enabled=true
             cp /tmp/bt/llama-3.2-1b/pp-runtime/bubbles.json "$LOGS/trace1b_bubbles.json" 2>/dev/null ;;
    profile) run_part profile 90 python3 -m scripts.gpu_profile_step --preset llama-3.2-1b ;;
    *) echo "unknown part $part" | tee -a "$log" ;;
    esac
done
date -u >>"$log"
tar czf "$OUT/logs.tgz" -C "$LOGS" .
if (( ${#failed[@]} )); then echo "failed parts: ${failed[*]}" | tee -a "$log"; exit 1; fi
