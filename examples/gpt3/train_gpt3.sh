#!/usr/bin/env bash
# GPT-3 pretraining launcher (125M, 350M or 1.3B), one node or many, with torchrun.
#
# Run the same command on every node; only NODE_RANK differs:
#
#   # node 0 (also the rendezvous host)            # node 1
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 \       NNODES=2 NODE_RANK=1 MASTER_ADDR=node0 \
#   MODEL_SIZE=1.3B DATA_PATH=data/pile_text_document  MODEL_SIZE=1.3B DATA_PATH=... \
#   bash examples/gpt3/train_gpt3.sh               bash examples/gpt3/train_gpt3.sh
#
# On SLURM, examples/multinode/srun_train.sh fills NNODES / NODE_RANK / MASTER_ADDR for you.
# Extra arguments go to pretrain_gpt.py after the ones below (later flags win), e.g.
# `bash examples/gpt3/train_gpt3.sh --train-iters 100`. DRY_RUN=1 prints the command instead.
# Model sizes follow the GPT-3 paper (Brown et al. 2020, table 2.1) and the data-efficiency
# paper's 1.3B run (16 heads, init std 0.013, peak lr 2e-4, min lr 1e-6).
set -euo pipefail
cd "$(dirname "$0")/../.."

# ---- cluster: which node this is and where the rendezvous runs ------------------------------
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
GPUS_ON_NODE=$(nvidia-smi -L 2>/dev/null | wc -l || true)
NPROC_PER_NODE=${NPROC_PER_NODE:-$(( GPUS_ON_NODE > 0 ? GPUS_ON_NODE : 1 ))}
WORLD_SIZE=$(( NNODES * NPROC_PER_NODE ))

# ---- parallel layout: TP x PP ranks hold one model; the rest is data parallel ---------------
TP=${TP:-1}                      # tensor parallel (keep it within a node)
PP=${PP:-1}                      # pipeline stages
VPP_LAYERS=${VPP_LAYERS:-}       # layers per virtual stage: interleaved 1F1B when set

# ---- model ---------------------------------------------------------------------------------
MODEL_SIZE=${MODEL_SIZE:-125M}
case "$MODEL_SIZE" in
  125M) LAYERS=12; HIDDEN=768;  HEADS=12; INIT_STD=0.02;  LR=6.0e-4; GLOBAL_BATCH=256 ;;
  350M) LAYERS=24; HIDDEN=1024; HEADS=16; INIT_STD=0.018; LR=3.0e-4; GLOBAL_BATCH=256 ;;
  1.3B) LAYERS=24; HIDDEN=2048; HEADS=16; INIT_STD=0.013; LR=2.0e-4; GLOBAL_BATCH=512 ;;
  *) echo "MODEL_SIZE must be 125M, 350M or 1.3B, got '$MODEL_SIZE'" >&2; exit 2 ;;
esac
SEQ_LENGTH=2048

# ---- data and tokenizer --------------------------------------------------------------------
DATA_PATH=${DATA_PATH:-}         # prefix of a preprocessed .bin/.idx (or "w1 p1 w2 p2" blend)
VOCAB_FILE=${VOCAB_FILE:-gpt2-vocab.json}
MERGE_FILE=${MERGE_FILE:-gpt2-merges.txt}
MOCK_DATA=${MOCK_DATA:-0}        # 1: synthetic tokens, no files (smoke tests)
DATA_CACHE=${DATA_CACHE:-runs/gpt3_$MODEL_SIZE/data_cache}

# ---- training budget and outputs -----------------------------------------------------------
TRAIN_TOKENS=${TRAIN_TOKENS:-300000000000}      # 300B, the GPT-3 budget
WARMUP_TOKENS=${WARMUP_TOKENS:-375000000}       # GPT-3 paper (the data-efficiency 1.3B run: 3B)
MICRO_BATCH=${MICRO_BATCH:-4}
PRECISION=${PRECISION:-fp16}                    # fp16, bf16 or fp32
CHECKPOINT_DIR=${CHECKPOINT_DIR:-runs/gpt3_$MODEL_SIZE/checkpoints}
TENSORBOARD_DIR=${TENSORBOARD_DIR:-}          # set to log there (needs: pip install tensorboard)
PYTHON=${PYTHON:-python}

DISTRIBUTED_ARGS=(
    --nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE"
    --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT"
)
MODEL_ARGS=(
    --num-layers "$LAYERS" --hidden-size "$HIDDEN" --num-attention-heads "$HEADS"
    --seq-length "$SEQ_LENGTH" --max-position-embeddings "$SEQ_LENGTH"
    --init-method-std "$INIT_STD" --attention-dropout 0.1 --hidden-dropout 0.1
)
PARALLEL_ARGS=(
    --tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
    --use-distributed-optimizer --distributed-timeout-minutes 10
)
[ -n "$VPP_LAYERS" ] && PARALLEL_ARGS+=(--num-layers-per-virtual-pipeline-stage "$VPP_LAYERS")
if [ "$MOCK_DATA" = 1 ]; then
    DATA_ARGS=(--mock-data --tokenizer-type NullTokenizer --vocab-size 50257)
else
    [ -n "$DATA_PATH" ] || { echo "set DATA_PATH (or MOCK_DATA=1)" >&2; exit 2; }
    # $DATA_PATH unquoted on purpose: a blend "w1 prefix1 w2 prefix2" is several arguments.
    DATA_ARGS=(
        --data-path $DATA_PATH --split 949,50,1 --data-cache-path "$DATA_CACHE"
        --tokenizer-type GPT2BPETokenizer --vocab-file "$VOCAB_FILE" --merge-file "$MERGE_FILE"
        --num-workers 2
    )
fi
TRAINING_ARGS=(
    --micro-batch-size "$MICRO_BATCH" --global-batch-size "$GLOBAL_BATCH"
    --train-tokens "$TRAIN_TOKENS"
    --lr "$LR" --min-lr 1.0e-6 --lr-decay-style cosine --lr-decay-tokens "$TRAIN_TOKENS"
    --lr-warmup-tokens "$WARMUP_TOKENS"
    --optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 --weight-decay 0.1 --clip-grad 1.0
    --seed 1234
)
case "$PRECISION" in
  fp16) TRAINING_ARGS+=(--fp16 --initial-loss-scale 2048 --loss-scale-window 500 --hysteresis 2) ;;
  bf16) TRAINING_ARGS+=(--bf16) ;;
  fp32) ;;
  *) echo "PRECISION must be fp16, bf16 or fp32, got '$PRECISION'" >&2; exit 2 ;;
esac
CHECKPOINT_ARGS=(--save "$CHECKPOINT_DIR" --load "$CHECKPOINT_DIR" --save-interval 1000)
LOGGING_ARGS=(--log-interval 10 --eval-interval 1000 --eval-iters 10)
[ -n "$TENSORBOARD_DIR" ] && LOGGING_ARGS+=(--tensorboard-dir "$TENSORBOARD_DIR" --log-validation-ppl-to-tensorboard)

CMD=("$PYTHON" -m torch.distributed.run "${DISTRIBUTED_ARGS[@]}" pretrain_gpt.py
     "${MODEL_ARGS[@]}" "${PARALLEL_ARGS[@]}" "${DATA_ARGS[@]}" "${TRAINING_ARGS[@]}"
     "${CHECKPOINT_ARGS[@]}" "${LOGGING_ARGS[@]}" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then
    printf '%q ' "${CMD[@]}"; echo
    exit 0
fi
echo "GPT-3 $MODEL_SIZE on $WORLD_SIZE processes ($NNODES node(s)): TP $TP x PP $PP x DP $(( WORLD_SIZE / (TP * PP) ))"
exec "${CMD[@]}"
