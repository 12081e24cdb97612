#!/bin/bash
# One pp-runtime job over several SLURM nodes: one torchrun agent per node, one rank (= pipeline stage) per GPU.
#
#   RUN_DIR=/shared/runs/llama-8st sbatch --nodes=2 --gpus-per-node=4 launch/slurm.sh \
#       model.path=/shared/models/my-llama workload=jsonl workload.path=/shared/requests.jsonl
#
# Arguments are Hydra overrides for launch.run. pipeline.stages defaults to the world size (nodes x GPUs per
# node). Preemption and time limits: the job is requeued and resumes by itself in the same RUN_DIR (a requeued
# job keeps its id), skipping the requests already in outputs.jsonl. Slurm signals this batch shell (USR1,
# --signal below, STOP_LEAD_S before the time limit; TERM on preemption or scancel); the shell forwards the
# signal to srun, srun to each node's torchrun, torchrun (--signals-to-handle) to every rank; the ranks drain
# (runtime.drain_timeout_s) and exit 75. After a USR1 the shell requeues the job itself (a time limit is not
# requeued by Slurm); after a preemption Slurm requeues it (--requeue); after scancel nothing is requeued.
# Environment (all optional):
#   RUN_DIR              run directory on a filesystem every node sees (default: $PWD/outputs/slurm-<job id>)
#   GPUS_PER_NODE        ranks per node (default: $SLURM_GPUS_ON_NODE, else 1; on CPU nodes add device=cpu)
#   RDZV_PORT            free TCP port on the first node for the rendezvous (default: 29500)
#   HEAD_ADDR            address of the first node as the others reach it (default: its SLURM host name)
#   NCCL_SOCKET_IFNAME   network interface(s) for NCCL (activations on GPUs), e.g. ib0 or eth0
#   GLOO_SOCKET_IFNAME   network interface(s) for gloo (headers, plans, tokens; activations on CPU)
#   TORCHRUN             the torchrun to use (default: torchrun from the active environment)
#   SHUTDOWN_TIMEOUT     seconds torchrun gives the ranks to drain after forwarding a signal before it SIGKILLs
#                        them (default 120; must exceed runtime.drain_timeout_s plus writing the reports, and be
#                        below the lead time of --signal=B:USR1@<lead>)
# See docs/MULTINODE.md.
#SBATCH --job-name=pp-runtime
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=01:00:00
#SBATCH --output=slurm-%j.out
#SBATCH --open-mode=append
#SBATCH --requeue
#SBATCH --signal=B:USR1@180

set -euo pipefail

: "${SLURM_JOB_ID:?run this script with sbatch (or inside an salloc allocation)}"
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
HEAD_ADDR=${HEAD_ADDR:-$HEAD}
RDZV_PORT=${RDZV_PORT:-29500}
RUN_DIR=${RUN_DIR:-$PWD/outputs/slurm-$SLURM_JOB_ID}
TORCHRUN=${TORCHRUN:-torchrun}
SHUTDOWN_TIMEOUT=${SHUTDOWN_TIMEOUT:-120}

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
echo "pp-runtime: $SLURM_NNODES node(s) x $GPUS_PER_NODE rank(s), rendezvous $HEAD_ADDR:$RDZV_PORT, run dir $RUN_DIR," \
    "attempt $((${SLURM_RESTART_COUNT:-0} + 1))"

# Bash runs a trap only between commands, so srun runs in the background and the shell waits for it: the trap
# then fires at once and passes the signal on (srun forwards signals to its tasks, the torchrun agents).
GOT_SIGNAL=""
SRUN_PID=""
forward() {
    GOT_SIGNAL=$1
    echo "pp-runtime: got SIG$1; the ranks finish what is in flight and stop (exit 75)"
    [[ -n "$SRUN_PID" ]] && kill -s "$1" "$SRUN_PID" 2>/dev/null || true
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# One task per node; if any node's agent fails, SLURM ends the others instead of leaving them waiting.
srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
    "$TORCHRUN" --nnodes="$SLURM_NNODES" --nproc_per_node="$GPUS_PER_NODE" \
    --rdzv_backend=c10d --rdzv_endpoint="$HEAD_ADDR:$RDZV_PORT" --rdzv_id="$SLURM_JOB_ID" \
    --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 --shutdown-timeout="$SHUTDOWN_TIMEOUT" \
    -m launch.run hydra.run.dir="'$RUN_DIR'" "$@" &  # quoted for Hydra: the path may hold '=', ',' or spaces
SRUN_PID=$!
[[ -n "$GOT_SIGNAL" ]] && kill -s "$GOT_SIGNAL" "$SRUN_PID"  # a signal that came before srun had started
rc=0
while true; do
    wait "$SRUN_PID" && rc=0 || rc=$?
    kill -0 "$SRUN_PID" 2>/dev/null || break  # wait returned for a trap, not because srun ended
done

# torchrun exits 1 whatever ended its ranks; the INCOMPLETE marker in the run directory tells a stopped run.
if [[ -e "$RUN_DIR/INCOMPLETE" ]]; then
    echo "pp-runtime: run incomplete: $(cat "$RUN_DIR/INCOMPLETE")"
    if [[ "$GOT_SIGNAL" == USR1 ]]; then
        echo "pp-runtime: requeueing job $SLURM_JOB_ID; it resumes in $RUN_DIR"
        scontrol requeue "$SLURM_JOB_ID"
    fi
fi
exit "$rc"
