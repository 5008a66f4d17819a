#!/usr/bin/env bash
# Multi-node training on SLURM: one torchrun agent per node started by srun, each running a
# launcher of examples/ (which starts one training process per GPU of its node).
#
#   sbatch --nodes 4 --gpus-per-node 8 examples/multinode/srun_train.sh \
#       examples/gpt3/train_gpt3_1.3b.sh --train-iters 1000
#
# The launcher's variables (MODEL_SIZE, TP, PP, DATA_PATH, ...) pass through the environment:
#   MODEL_SIZE=1.3B TP=2 PP=2 DATA_PATH=/data/pile_text_document sbatch --nodes 4 ... srun_train.sh ...
# Node 0 of the allocation hosts the rendezvous; NODE_RANK is each node's SLURM_NODEID.
#SBATCH --job-name=megatron-pretrain
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
#SBATCH --output=%x-%j.out
set -euo pipefail

LAUNCHER=${1:?usage: srun_train.sh <examples/.../launcher.sh> [pretrain flags...]}
shift

# ---- rendezvous: the first node of the allocation, a port derived from the job id ----------
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
MASTER_PORT=${MASTER_PORT:-$(( 20000 + SLURM_JOB_ID % 20000 ))}
NNODES=$SLURM_JOB_NUM_NODES
export MASTER_ADDR MASTER_PORT NNODES

# ---- per node: NODE_RANK from SLURM, processes per node from the GPUs SLURM gave us ---------
if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then
    export NPROC_PER_NODE=${NPROC_PER_NODE:-$SLURM_GPUS_ON_NODE}
fi
echo "job $SLURM_JOB_ID: $NNODES node(s), rendezvous at $MASTER_ADDR:$MASTER_PORT, launcher $LAUNCHER"
# Single quotes: SLURM_NODEID is expanded on each node, not here.
srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c 'NODE_RANK=$SLURM_NODEID exec bash "$0" "$@"' \
    "$LAUNCHER" "$@"
