#!/bin/bash
# One pp-runtime job over several SLURM nodes: one torchrun agent per node, one rank (= pipeline stage) per GPU.
#
#   RUN_DIR=/shared/runs/llama-8st sbatch --nodes=2 --gpus-per-node=4 launch/slurm.sh \
#       model.path=/shared/models/my-llama workload=jsonl workload.path=/shared/requests.jsonl
#
# Arguments are Hydra overrides for launch.run. pipeline.stages defaults to the world size (nodes x GPUs per
# node). Environment (all optional):
#   RUN_DIR              run directory on a filesystem every node sees (default: $PWD/outputs/slurm-<job id>)
#   GPUS_PER_NODE        ranks per node (default: $SLURM_GPUS_ON_NODE, else 1; on CPU nodes add device=cpu)
#   RDZV_PORT            free TCP port on the first node for the rendezvous (default: 29500)
#   HEAD_ADDR            address of the first node as the others reach it (default: its SLURM host name)
#   NCCL_SOCKET_IFNAME   network interface(s) for NCCL (activations on GPUs), e.g. ib0 or eth0
#   GLOO_SOCKET_IFNAME   network interface(s) for gloo (headers, plans, tokens; activations on CPU)
#   TORCHRUN             the torchrun to use (default: torchrun from the active environment)
# See docs/MULTINODE.md.
#SBATCH --job-name=pp-runtime
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=01:00:00
#SBATCH --output=slurm-%j.out

set -euo pipefail

: "${SLURM_JOB_ID:?run this script with sbatch (or inside an salloc allocation)}"
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
HEAD_ADDR=${HEAD_ADDR:-$HEAD}
RDZV_PORT=${RDZV_PORT:-29500}
RUN_DIR=${RUN_DIR:-$PWD/outputs/slurm-$SLURM_JOB_ID}
TORCHRUN=${TORCHRUN:-torchrun}

case "$RUN_DIR" in
    /*) ;;
    *) RUN_DIR=$PWD/$RUN_DIR ;;  # every node must resolve it to the same place
esac
mkdir -p "$RUN_DIR"

# Interface choices travel to every node with the environment (srun exports it); say which are in force.
for var in NCCL_SOCKET_IFNAME GLOO_SOCKET_IFNAME; do
    if [[ -n "${!var:-}" ]]; then
        export "$var"
        echo "$var=${!var}"
    fi
done
echo "pp-runtime: $SLURM_NNODES node(s) x $GPUS_PER_NODE rank(s), rendezvous $HEAD_ADDR:$RDZV_PORT, run dir $RUN_DIR"

# One task per node; if any node's agent fails, SLURM ends the others instead of leaving them waiting.
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
    "$TORCHRUN" --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_backend=c10d --rdzv_endpoint="$HEAD_ADDR:$RDZV_PORT" --rdzv_id="$SLURM_JOB_ID" \
    -m launch.run hydra.run.dir="'$RUN_DIR'" "$@"  # quoted for Hydra: the path may hold '=', ',' or spaces
