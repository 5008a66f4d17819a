#!/usr/bin/env bash
# BERT-large (336M) runs of the data-efficiency paper (arXiv 2212.03597, with random-LTD from
# arXiv 2211.11586): baseline, curriculum learning (CL), random-LTD, and CL + random-LTD, each with
# 100%, 67% or 50% of the baseline's 2M iterations (peak lr and schedules scaled as in the paper).
#
#   # once per dataset: vocabulary rarity of every training sample (CPU work, one worker per process)
#   STAGE=analyze DATA_PATH=data/pile_bert_text_sentence bash examples/data_efficiency/bert_large.sh
#   # then, on every node (only NODE_RANK differs):
#   RUN=cl_ltd DATA_PERCENT=67 NNODES=8 NODE_RANK=0 MASTER_ADDR=node0 \
#       DATA_PATH=data/pile_bert_text_sentence bash examples/data_efficiency/bert_large.sh
#
# RUN: baseline | cl | ltd | cl_ltd.  DATA_PERCENT: 100 | 67 | 50.
# The data must be split into sentences (tools/preprocess_data.py --split-sentences) with a BERT
# WordPiece vocabulary. The JSON (--deepspeed_config) is written by tools/data_efficiency_config.py
# into $OUT. Extra arguments go to pretrain_bert.py after these (later flags win).
# DRY_RUN=1 writes the JSON and prints the command instead of running it.
set -euo pipefail
cd "$(dirname "$0")/../.."

# ---- which run ---------------------------------------------------------------------------------
STAGE=${STAGE:-train}              # analyze | train
RUN=${RUN:-cl_ltd}                 # baseline | cl | ltd | cl_ltd
DATA_PERCENT=${DATA_PERCENT:-100}  # 100 | 67 | 50 (% of the baseline's iterations)
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
PP=${PP:-1}

# ---- model (paper table) -----------------------------------------------------------------------
NUM_LAYERS=24
HIDDEN=1024
HEADS=16
SEQ_LENGTH=512
INIT_STD=0.02
GLOBAL_BATCH=1024
MICRO_BATCH=${MICRO_BATCH:-16}
SEED=1234

# ---- budget, lr and schedules by share of data (paper table) -----------------------------------
case "$DATA_PERCENT" in
  100) BUDGET_ITERS=2000000; LR=1.0e-4; CL_STEPS=960000 ;;
  67)  BUDGET_ITERS=1340000; LR=1.5e-4; CL_STEPS=640000 ;;
  50)  BUDGET_ITERS=1000000; LR=2.0e-4; CL_STEPS=480000 ;;
  *) echo "DATA_PERCENT must be 100, 67 or 50, got '$DATA_PERCENT'" >&2; exit 2 ;;
esac
# The budget is counted in tokens (CL and random-LTD consume fewer per step): the baseline's
# iterations x batch x sequence; the lr decays linearly over the same tokens.
TRAIN_TOKENS=$(( BUDGET_ITERS * GLOBAL_BATCH * SEQ_LENGTH ))
MIN_LR=1.0e-5
WARMUP_ITERS=10000
LTD_STEPS=$BUDGET_ITERS            # random-LTD ramps over the whole run
# Samples of the train split's index: enough for the longest run; the analysis and every run use
# this same index, so one analysis serves all.
INDEX_SAMPLES=$(( 4000000 * GLOBAL_BATCH ))

# ---- curriculum learning and random-LTD (paper table) -------------------------------------------
CL_VOC_MIN=5; CL_VOC_MAX=100; CL_VOC_ROOT=2      # vocab rarity, percentile, fixed_root
CL_SEQLEN_MIN=128; CL_SEQLEN_STEP=8              # seqlen_truncate 128 -> 512, linear
LTD_MIN=128; LTD_SEQ_PER_STEP=16                 # K from 128 to 512 by 16, layers 1..22
DROPOUT=0.1
[ "$USE_LTD" = 1 ] && DROPOUT=0.0                # Megatron-DeepSpeed's BERT random-LTD runs use no dropout

# ---- data and outputs --------------------------------------------------------------------------
DATA_PATH=${DATA_PATH:-}           # prefix of a sentence-split .bin/.idx
VOCAB_FILE=${VOCAB_FILE:-bert-large-uncased-vocab.txt}
DATA_CACHE=${DATA_CACHE:-runs/data_efficiency/bert_index_cache}
METRICS=${METRICS:-vocab_rarity}   # analysis metrics (space-separated; CL uses vocab_rarity)
ANALYSIS=${ANALYSIS:-runs/data_efficiency/bert_analysis}
OUT=${OUT:-runs/data_efficiency/bert_large_${RUN}_${DATA_PERCENT}pct}
DS_CONFIG=$OUT/ds_config.json
PYTHON=${PYTHON:-python}
[ -n "$DATA_PATH" ] || { echo "set DATA_PATH to a sentence-split dataset prefix" >&2; exit 2; }

DISTRIBUTED_ARGS=(--nnodes "$NNODES" --node-rank "$NODE_RANK" --nproc-per-node "$NPROC_PER_NODE"
                  --master-addr "$MASTER_ADDR" --master-port "$MASTER_PORT")
TOKENIZER_ARGS=(--tokenizer-type BertWordPieceLowerCase --vocab-file "$VOCAB_FILE")
# The analysis and training must build the same train split: these flags are shared.
DATA_ARGS=(--data-path "$DATA_PATH" --split 949,50,1 --seq-length "$SEQ_LENGTH" --seed "$SEED"
           --train-samples "$INDEX_SAMPLES" --data-cache-path "$DATA_CACHE" --short-seq-prob 0.1)

if [ "$STAGE" = analyze ]; then
    CMD=("$PYTHON" -m torch.distributed.run "${DISTRIBUTED_ARGS[@]}" tools/analyze_data.py
         --metric $METRICS --save "$ANALYSIS" --dataset-type BERT
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
             --seqlen-truncate "$CL_SEQLEN_MIN" "$SEQ_LENGTH" "$CL_STEPS" "$CL_SEQLEN_STEP")
fi
LTD_ARGS=()
if [ "$USE_LTD" = 1 ]; then
    LTD_ARGS=(--num-layers "$NUM_LAYERS" --seq-length "$SEQ_LENGTH" --random-ltd-layers 1-22
              --random-ltd-model-type encoder --random-ltd-min "$LTD_MIN"
              --random-ltd-max "$SEQ_LENGTH" --random-ltd-require-steps "$LTD_STEPS"
              --random-ltd-seq-per-step "$LTD_SEQ_PER_STEP")
fi
"$PYTHON" tools/data_efficiency_config.py --output "$DS_CONFIG" "${BATCH_ARGS[@]}" --seed "$SEED" \
    --clip-grad 1.0 --log-interval 100 "${FP16_ARGS[@]}" "${CL_ARGS[@]}" "${LTD_ARGS[@]}"

# ---- training ----------------------------------------------------------------------------------
MODEL_ARGS=(--num-layers "$NUM_LAYERS" --hidden-size "$HIDDEN" --num-attention-heads "$HEADS"
            --max-position-embeddings "$SEQ_LENGTH" --init-method-std "$INIT_STD"
            --attention-dropout "$DROPOUT" --hidden-dropout "$DROPOUT")
PARALLEL_ARGS=(--tensor-model-parallel-size "$TP" --pipeline-model-parallel-size "$PP"
               --use-distributed-optimizer --distributed-timeout-minutes 10)
OPTIMIZER_ARGS=(--optimizer adam --adam-beta1 0.9 --adam-beta2 0.999 --weight-decay 0.01
                --clip-grad 1.0)
LR_ARGS=(--lr "$LR" --min-lr "$MIN_LR" --lr-decay-style linear --lr-decay-tokens "$TRAIN_TOKENS"
         --lr-warmup-iters "$WARMUP_ITERS")
TRAINING_ARGS=("${BATCH_ARGS[@]}" --train-tokens "$TRAIN_TOKENS" --mask-prob 0.15 --num-workers 4)
DE_ARGS=(--deepspeed --deepspeed_config "$DS_CONFIG")
[ "$USE_CL" = 1 ] && DE_ARGS+=(--data-efficiency-curriculum-learning)
[ "$USE_LTD" = 1 ] && DE_ARGS+=(--random-ltd)
CHECKPOINT_ARGS=(--save "$OUT/checkpoints" --load "$OUT/checkpoints" --save-interval 20000)
LOGGING_ARGS=(--log-interval 100 --eval-interval 1000 --eval-iters 10
              --tensorboard-dir "$OUT/tensorboard" --log-validation-ppl-to-tensorboard)

CMD=("$PYTHON" -m torch.distributed.run "${DISTRIBUTED_ARGS[@]}" pretrain_bert.py
     "${MODEL_ARGS[@]}" "${PARALLEL_ARGS[@]}" "${DATA_ARGS[@]}" "${TOKENIZER_ARGS[@]}"
     "${OPTIMIZER_ARGS[@]}" "${LR_ARGS[@]}" "${TRAINING_ARGS[@]}" "${FP16_ARGS[@]}" "${DE_ARGS[@]}"
     "${CHECKPOINT_ARGS[@]}" "${LOGGING_ARGS[@]}" "$@")
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
echo "BERT-large $RUN, $DATA_PERCENT% of the data, $(( NNODES * NPROC_PER_NODE )) processes, TP $TP, PP $PP"
exec "${CMD[@]}"
