#!/usr/bin/env bash
# GPT-3 1.3B runs of the data-efficiency paper (arXiv 2212.03597, with random-LTD from
# arXiv 2211.11586): baseline, curriculum learning (CL), random-LTD, and CL + random-LTD, each with
# 100%, 67% or 50% of the baseline's 300B tokens (peak lr and schedules scaled as in the paper).
#
#   # once per dataset: vocabulary rarity of every training sample (CPU work, one worker per process)
#   STAGE=analyze DATA_PATH=data/pile_text_document bash examples/data_efficiency/gpt_1.3b.sh
#   # then, on every node (only NODE_RANK differs):
#   RUN=cl_ltd DATA_PERCENT=50 NNODES=8 NODE_RANK=0 MASTER_ADDR=node0 \
#       DATA_PATH=data/pile_text_document bash examples/data_efficiency/gpt_1.3b.sh
#
# RUN: baseline | cl | ltd | cl_ltd.  DATA_PERCENT: 100 | 67 | 50.  SEQLEN_CL: truncate | reshape.
# The JSON (--deepspeed_config) is written by tools/data_efficiency_config.py into $OUT from the
# variables below. Extra arguments go to pretrain_gpt.py after these (later flags win).
# DRY_RUN=1 writes the JSON and prints the command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/../.."

# ---- which run ---------------------------------------------------------------------------------
STAGE=${STAGE:-train}              # analyze | train
RUN=${RUN:-cl_ltd}                 # baseline | cl | ltd | cl_ltd
DATA_PERCENT=${DATA_PERCENT:-100}  # 100 | 67 | 50 (% of the baseline's tokens)
SEQLEN_CL=${SEQLEN_CL:-truncate}   # truncate | reshape: how CL shortens early samples
case "$RUN" in
  baseline) USE_CL=0; USE_LTD=0 ;;
  cl)       USE_CL=1; USE_LTD=0 ;;
  ltd)      USE_CL=0; USE_LTD=1 ;;
  cl_ltd)   USE_CL=1; USE_LTD=1 ;;
  *) echo "RUN must be baseline, cl, ltd or cl_ltd, got '$RUN'" >&2; exit 2 ;;
esac

# ---- cluster -----------------------------------------------------------------------------------
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-localhost}
MASTER_PORT=${MASTER_PORT:-6000}
GPUS_ON_NODE=$(nvidia-smi -L 2>/dev/null | wc -l || true)
NPROC_PER_NODE=${NPROC_PER_NODE:-$(( GPUS_ON_NODE > 0 ? GPUS_ON_NODE : 1 ))}
TP=${TP:-1}
PP=${PP:-1}                        # curriculum and random-LTD work with pipeline parallelism here

# ---- model (paper table) -----------------------------------------------------------------------
NUM_LAYERS=24
HIDDEN=2048
HEADS=16
SEQ_LENGTH=2048
INIT_STD=0.013
GLOBAL_BATCH=512
MICRO_BATCH=${MICRO_BATCH:-4}
SEED=1234

# ---- budget, lr and schedules by share of data (paper table) -----------------------------------
case "$DATA_PERCENT" in
  100) TRAIN_TOKENS=300000000000; LR=2.0e-4; CL_STEPS=110000; LTD_STEPS=200000 ;;
  67)  TRAIN_TOKENS=200000000000; LR=3.0e-4; CL_STEPS=73000;  LTD_STEPS=133000 ;;
  50)  TRAIN_TOKENS=150000000000; LR=4.0e-4; CL_STEPS=55000;  LTD_STEPS=100000 ;;
  *) echo "DATA_PERCENT must be 100, 67 or 50, got '$DATA_PERCENT'" >&2; exit 2 ;;
esac
MIN_LR=1.0e-6
WARMUP_TOKENS=3000000000           # 3B tokens
# Samples of the train split's index: enough for the longest run (CL and random-LTD consume fewer
# tokens per sample); the analysis and every run use this same index, so one analysis serves all.
INDEX_SAMPLES=$(( 300000000000 * 2 / SEQ_LENGTH ))

# ---- curriculum learning and random-LTD (paper table) -------------------------------------------
CL_VOC_MIN=1; CL_VOC_MAX=100; CL_VOC_ROOT=2      # vocab rarity, percentile, fixed_root
CL_SEQLEN_MIN=80; CL_SEQLEN_STEP=8               # seqlen 80 -> 2048, linear, multiples of 8
LTD_MIN=128; LTD_SEQ_PER_STEP=16                 # K from 128 to 2048 by 16, layers 1..22

# ---- data and outputs --------------------------------------------------------------------------
DATA_PATH=${DATA_PATH:-}           # prefix of a preprocessed .bin/.idx
VOCAB_FILE=${VOCAB_FILE:-gpt2-vocab.json}
MERGE_FILE=${MERGE_FILE:-gpt2-merges.txt}
DATA_CACHE=${DATA_CACHE:-runs/data_efficiency/gpt_index_cache}
METRICS=${METRICS:-vocab_rarity}   # analysis metrics (space-separated; CL uses vocab_rarity)
ANALYSIS=${ANALYSIS:-runs/data_efficiency/gpt_analysis}
OUT=${OUT:-runs/data_efficiency/gpt_1.3b_${RUN}_${DATA_PERCENT}pct}
DS_CONFIG=$OUT/ds_config.json
PYTHON=${PYTHON:-python}
[ -n "$DATA_PATH" ] || { echo "set DATA_PATH to a preprocessed dataset prefix" >&2; exit 2; }

DISTRIBUTED_ARGS=(--nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE"
                  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")
TOKENIZER_ARGS=(--tokenizer-type GPT2BPETokenizer --vocab-file "$VOCAB_FILE" --merge-file "$MERGE_FILE")
# The analysis and training must build the same train split: these flags are shared.
DATA_ARGS=(--data-path "$DATA_PATH" --split 949,50,1 --seq-length "$SEQ_LENGTH" --seed "$SEED"
           --train-samples "$INDEX_SAMPLES" --data-cache-path "$DATA_CACHE")

if [ "$STAGE" = analyze ]; then
    CMD=("$PYTHON" -m torch.distributed.run "${DISTRIBUTED_ARGS[@]}" tools/analyze_data.py
         --metric $METRICS --save "$ANALYSIS" --dataset-type GPT
         "${DATA_ARGS[@]}" "${TOKENIZER_ARGS[@]}" "$@")
    if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
    exec "${CMD[@]}"
fi
[ "$STAGE" = train ] || { echo "STAGE must be analyze or train, got '$STAGE'" >&2; exit 2; }

# ---- the JSON ----------------------------------------------------------------------------------
BATCH_ARGS=(--global-batch-size "$GLOBAL_BATCH" --micro-batch-size "$MICRO_BATCH")
FP16_ARGS=(--fp16 --initial-loss-scale 2048 --loss-scale-window 500 --hysteresis 2)
CL_ARGS=()
if [ "$USE_CL" = 1 ]; then
    VOC=$ANALYSIS/vocab_rarity/vocab_rarity
    CL_ARGS=(--cl-metric voc type=percentile clustering=schedule_based
                         min="$CL_VOC_MIN" max="$CL_VOC_MAX" schedule=fixed_root
                         total_steps="$CL_STEPS" step=1 root="$CL_VOC_ROOT"
                         index_to_sample="${VOC}_index_to_sample_percentile_merged"
                         index_to_metric="${VOC}_index_to_metric"
             "--seqlen-$SEQLEN_CL" "$CL_SEQLEN_MIN" "$SEQ_LENGTH" "$CL_STEPS" "$CL_SEQLEN_STEP")
fi
LTD_ARGS=()
if [ "$USE_LTD" = 1 ]; then
    LTD_ARGS=(--num-layers "$NUM_LAYERS" --seq-length "$SEQ_LENGTH" --random-ltd-layers 1-22
              --random-ltd-min "$LTD_MIN" --random-ltd-max "$SEQ_LENGTH"
              --random-ltd-require-steps "$LTD_STEPS" --random-ltd-seq-per-step "$LTD_SEQ_PER_STEP")
fi
"$PYTHON" tools/data_efficiency_config.py --output "$DS_CONFIG" "${BATCH_ARGS[@]}" --seed "$SEED" \
    --clip-grad 1.0 --log-interval 100 "${FP16_ARGS[@]}" "${CL_ARGS[@]}" "${LTD_ARGS[@]}"

# ---- training ----------------------------------------------------------------------------------
MODEL_ARGS=(--num-layers "$NUM_LAYERS" --hidden-size "$HIDDEN" --num-attention-heads "$HEADS"
            --max-position-embeddings "$SEQ_LENGTH" --init-method-std "$INIT_STD"
            --attention-dropout 0.1 --hidden-dropout 0.1)
PARALLEL_ARGS=(--tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
               --use-distributed-optimizer --distributed-timeout-minutes 10)
OPTIMIZER_ARGS=(--optimizer adam --adam-beta1 0.9 --adam-beta2 0.95 --weight-decay 0.1
                --clip-grad 1.0)
LR_ARGS=(--lr "$LR" --min-lr "$MIN_LR" --lr-decay-style cosine --lr-decay-tokens "$TRAIN_TOKENS"
         --lr-warmup-tokens "$WARMUP_TOKENS")
TRAINING_ARGS=("${BATCH_ARGS[@]}" --train-tokens "$TRAIN_TOKENS" --recompute-granularity full
               --recompute-method uniform --recompute-num-layers 1 --num-workers 2)
DE_ARGS=(--deepspeed --deepspeed_config "$DS_CONFIG")
[ "$USE_CL" = 1 ] && DE_ARGS+=(--data-efficiency-curriculum-learning)
[ "$USE_LTD" = 1 ] && DE_ARGS+=(--random-ltd)
CHECKPOINT_ARGS=(--save "$OUT/checkpoints" --load "$OUT/checkpoints" --save-interval 2000)
LOGGING_ARGS=(--log-interval 100 --eval-interval 1000 --eval-iters 10
              --tensorboard-dir "$OUT/tensorboard" --log-validation-ppl-to-tensorboard)

CMD=("$PYTHON" -m torch.distributed.run "${DISTRIBUTED_ARGS[@]}" pretrain_gpt.py
     "${MODEL_ARGS[@]}" "${PARALLEL_ARGS[@]}" "${DATA_ARGS[@]}" "${TOKENIZER_ARGS[@]}"
     "${OPTIMIZER_ARGS[@]}" "${LR_ARGS[@]}" "${TRAINING_ARGS[@]}" "${FP16_ARGS[@]}" "${DE_ARGS[@]}"
     "${CHECKPOINT_ARGS[@]}" "${LOGGING_ARGS[@]}" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
echo "GPT-3 1.3B $RUN, $DATA_PERCENT% of the data, $(( NNODES * NPROC_PER_NODE )) processes, TP $TP, PP $PP"
"${CMD[@]}"
# Zero-shot evaluation on the paper's tasks (EVAL=0 skips it; one node runs it).
if [ "${EVAL:-1}" = 1 ] && [ "${NODE_RANK:-0}" = 0 ]; then
    bash examples/data_efficiency/eval_zero_shot.sh "$OUT/checkpoints" "$OUT/eval"
fi
