#!/usr/bin/env bash
# BERT-large (336M) pretraining launcher, one node or many, with torchrun.
#
# The data must be preprocessed sentence by sentence with a BERT WordPiece vocabulary:
#   python tools/preprocess_data.py --input corpus.jsonl --output-prefix data/bert \
#       --tokenizer-type BertWordPieceLowerCase --vocab-file bert-large-uncased-vocab.txt \
#       --split-sentences --workers 16
# then, on every node (only NODE_RANK differs; on SLURM use examples/multinode/srun_train.sh):
#   NNODES=4 NODE_RANK=0 MASTER_ADDR=node0 DATA_PATH=data/bert_text_sentence \
#       VOCAB_FILE=bert-large-uncased-vocab.txt bash examples/bert/train_bert_large.sh
#
# Hyperparameters of the data-efficiency paper's BERT-large baseline: global batch 1024,
# sequence 512, peak lr 1e-4 -> 1e-5 linear, 10k warmup iterations, 2M iterations, Adam
# (0.9, 0.999), weight decay 0.01, clipping 1.0, fp16. Extra arguments go to pretrain_bert.py
# after these (later flags win); DRY_RUN=1 prints the command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/../.."

# ---- cluster -------------------------------------------------------------------------------
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
GPUS_ON_NODE=$(nvidia-smi -L 2>/dev/null | wc -l || true)
NPROC_PER_NODE=${NPROC_PER_NODE:-$(( GPUS_ON_NODE > 0 ? GPUS_ON_NODE : 1 ))}
WORLD_SIZE=$(( NNODES * NPROC_PER_NODE ))

# ---- parallel layout -----------------------------------------------------------------------
TP=${TP:-1}
PP=${PP:-1}
VPP_LAYERS=${VPP_LAYERS:-}

# ---- data, budget, outputs -----------------------------------------------------------------
DATA_PATH=${DATA_PATH:-}         # prefix of a sentence-split .bin/.idx (or a weighted blend)
VOCAB_FILE=${VOCAB_FILE:-bert-large-uncased-vocab.txt}
DATA_CACHE=${DATA_CACHE:-runs/bert_large/data_cache}
TRAIN_ITERS=${TRAIN_ITERS:-2000000}
MICRO_BATCH=${MICRO_BATCH:-16}
GLOBAL_BATCH=${GLOBAL_BATCH:-1024}
PRECISION=${PRECISION:-fp16}     # fp16, bf16 or fp32
CHECKPOINT_DIR=${CHECKPOINT_DIR:-runs/bert_large/checkpoints}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-}
PYTHON=${PYTHON:-python}

DISTRIBUTED_ARGS=(
    --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE"
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
)
MODEL_ARGS=(
    --num-layers 24 --hidden-size 1024 --num-attention-heads 16
    --seq-length 512 --max-position-embeddings 512 --init-method-std 0.02
    --attention-dropout 0.1 --hidden-dropout 0.1
)
PARALLEL_ARGS=(
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
    --use-distributed-optimizer --distributed-timeout-minutes 10
)
[ -n "$VPP_LAYERS" ] && PARALLEL_ARGS+=(--num-layers-per-virtual-pipeline-stage "$VPP_LAYERS")
[ -n "$DATA_PATH" ] || { echo "set DATA_PATH to a sentence-split dataset prefix" >&2; exit 2; }
# $DATA_PATH unquoted on purpose: a blend "w1 prefix1 w2 prefix2" is several arguments.
DATA_ARGS=(
    --data-path $DATA_PATH --split 949,50,1 --data-cache-path "$DATA_CACHE"
    --tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB_FILE"
    --mask-prob 0.15 --short-seq-prob 0.1 --num-workers 2
)
TRAINING_ARGS=(
    --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS"
    --lr 1.0e-4 --min-lr 1.0e-5 --lr-decay-style linear --lr-decay-iters "$TRAIN_ITERS"
    --lr-warmup-iters 10000
    --optimizer adam --adam-beta1 0.9 --adam-beta2 0.999 --weight-decay 0.01 --clip-grad 1.0
    --seed 1234
)
case "$PRECISION" in
  fp16) TRAINING_ARGS+=(--fp16 --initial-loss-scale 2048 --loss-scale-window 500 --hysteresis 2) ;;
  bf16) TRAINING_ARGS+=(--bf16) ;;
  fp32) ;;
  *) echo "PRECISION must be fp16, bf16 or fp32, got '$PRECISION'" >&2; exit 2 ;;
esac
CHECKPOINT_ARGS=(--save "$CHECKPOINT_DIR" --load "$CHECKPOINT_DIR" --save-interval 10000)
LOGGING_ARGS=(--log-interval 100 --eval-interval 10000 --eval-iters 10)
[ -n "$TENSORBOARD_DIR" ] && LOGGING_ARGS+=(--tensorboard-dir "$TENSORBOARD_DIR" --log-validation-ppl-to-tensorboard)

CMD=("$PYTHON" -m torch.distributed.run "${DISTRIBUTED_ARGS[@]}" pretrain_bert.py
     "${MODEL_ARGS[@]}" "${PARALLEL_ARGS[@]}" "${DATA_ARGS[@]}" "${TRAINING_ARGS[@]}"
     "${CHECKPOINT_ARGS[@]}" "${LOGGING_ARGS[@]}" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi
echo "BERT-large on $WORLD_SIZE processes ($NNODES node(s)): TP $TP x PP $PP x DP $(( WORLD_SIZE / (TP * PP) ))"
exec "${CMD[@]}"
