#!/usr/bin/env bash
# Two "nodes" on one CPU machine: two torchrun agents joined at 127.0.0.1, one process each,
# training a tiny tensor-parallel GPT on mock data (what a 2-node cluster job does, without one).
#
#   bash examples/multinode/two_nodes_cpu.sh             # TP 2 across the two "nodes"
#   TP=1 PP=2 bash examples/multinode/two_nodes_cpu.sh   # or a 2-stage pipeline
#
# On real machines run the node-0 command on the first host and the node-1 command on the
# second, with MASTER_ADDR set to the first host's address.
set -euo pipefail
cd "$(dirname "$0")/../.."

MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29517}
TP=${TP:-2}
PP=${PP:-1}
ITERS=${ITERS:-20}
PYTHON=${PYTHON:-python}

MODEL_ARGS=(--num-layers 4 --hidden-size 64 --num-attention-heads 4 --seq-length 64
            --max-position-embeddings 64)
PARALLEL_ARGS=(--tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
               --distributed-backend gloo --distributed-timeout-minutes 1)
DATA_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size 1000 --num-workers 0)
TRAINING_ARGS=(--micro-batch-size 4 --global-batch-size 16 --train-iters "$ITERS" --lr 1e-3
               --lr-decay-style cosine --lr-warmup-iters 2)
LOGGING_ARGS=(--log-interval 5 --eval-interval 1000 --eval-iters 0)

node() {  # node <rank>
    OMP_NUM_THREADS=1 "$PYTHON" -m torch.distributed.run \
        --nnodes 2 --node-rank "$1" --nproc-per-node 1 \
        --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT" \
        pretrain_gpt.py "${MODEL_ARGS[@]}" "${PARALLEL_ARGS[@]}" "${DATA_ARGS[@]}" \
        "${TRAINING_ARGS[@]}" "${LOGGING_ARGS[@]}"
}
node 1 > /dev/null &
NODE1=$!
trap 'kill "$NODE1" 2>/dev/null || true' EXIT
node 0
wait "$NODE1"
