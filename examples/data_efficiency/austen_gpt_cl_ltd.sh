#!/usr/bin/env bash
# Curriculum learning + random-LTD on a CPU in a few minutes: a tiny GPT on the embedded Jane
# Austen corpus, with the paper's recipe scaled down (vocabulary-rarity curriculum + sequence-length
# truncation, random-LTD on all layers but the first and the last).
#
#   bash examples/data_efficiency/austen_gpt_cl_ltd.sh                # runs/austen_gpt_cl_ltd
#   ITERS=40 NPROC=1 bash examples/data_efficiency/austen_gpt_cl_ltd.sh
#
# Steps: prepare the data (austen_prepare.sh), score every training sample's vocabulary rarity
# (tools/analyze_data.py, one worker per process), write the DeepSpeed-style JSON
# (tools/data_efficiency_config.py), train. The iteration log shows the curriculum growing:
#   curriculum seqlen: 32 -> 128 | difficulty vocab_rarity: 1 -> 100 | random-LTD kept tokens: 32 -> 128
# Both schedules end at 60% of the run, the rest trains on full-length samples of every rarity.
set -euo pipefail
cd "$(dirname "$0")/../.."

# ---- run ---------------------------------------------------------------------------------------
WORK=${WORK:-runs/austen_gpt_cl_ltd}   # analysis, JSON, checkpoints
DATA=${DATA:-runs/austen_data}         # prepared corpus (shared with austen_bert_cl_ltd.sh)
NPROC=${NPROC:-2}                      # data-parallel processes (gloo)
ITERS=${ITERS:-200}                    # optimizer steps
SEED=${SEED:-1234}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 ))}

# ---- model and batch ---------------------------------------------------------------------------
NUM_LAYERS=4
HIDDEN=256
HEADS=4
SEQ_LENGTH=128
MICRO_BATCH=8
GLOBAL_BATCH=32
SPLIT=95,5,0

# ---- data efficiency (the paper's GPT recipe, scaled to ITERS) -----------------------------------
CL_STEPS=$(( ITERS * 6 / 10 > 0 ? ITERS * 6 / 10 : 1 ))   # curriculum: steps to full difficulty
CL_SEQLEN_MIN=32                                            # seqlen_truncate 32 -> SEQ_LENGTH
LTD_MIN=32                                                  # random-LTD: K from 32 ...
LTD_STEPS=$CL_STEPS                                         # ... to SEQ_LENGTH over LTD_STEPS
ANALYSIS=$WORK/analysis
DS_CONFIG=$WORK/ds_config.json

bash examples/data_efficiency/austen_prepare.sh gpt "$DATA"
TOKENIZER_ARGS=(--tokenizer-type GPT2BPETokenizer --vocab-file "$DATA/gpt_tokenizer/vocab.json"
                --merge-file "$DATA/gpt_tokenizer/merges.txt")
# The analysis must see the training split exactly as training builds it: same data flags.
DATA_ARGS=(--data-path "$DATA/austen_gpt_text_document" --split "$SPLIT" --seq-length "$SEQ_LENGTH"
           --seed "$SEED" --data-cache-path "$WORK/index_cache")
RUN_SIZE_ARGS=(--train-iters "$ITERS" --global-batch-size "$GLOBAL_BATCH")
LAUNCH=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC")

# 1. Vocabulary rarity of every training sample (DeepSpeed DataAnalyzer's output layout).
mkdir -p "$WORK"
"${LAUNCH[@]}" tools/analyze_data.py --metric vocab_rarity --save "$ANALYSIS" --dataset-type GPT \
    "${DATA_ARGS[@]}" "${RUN_SIZE_ARGS[@]}" "${TOKENIZER_ARGS[@]}"

# 2. The JSON: vocab_rarity percentile 1 -> 100 (fixed_root, degree 2), seqlen_truncate, random-LTD.
VOC=$ANALYSIS/vocab_rarity/vocab_rarity
CL_ARGS=(--cl-metric vocab_rarity type=percentile clustering=schedule_based min=1 max=100
                     schedule=fixed_root total_steps="$CL_STEPS" step=1 root=2
                     index_to_sample="${VOC}_index_to_sample_percentile_merged"
                     index_to_metric="${VOC}_index_to_metric"
         --seqlen-truncate "$CL_SEQLEN_MIN" "$SEQ_LENGTH" "$CL_STEPS" 8)
LTD_ARGS=(--num-layers "$NUM_LAYERS" --seq-length "$SEQ_LENGTH" --random-ltd-min "$LTD_MIN"
          --random-ltd-require-steps "$LTD_STEPS" --random-ltd-seq-per-step 16)
"$PYTHON" tools/data_efficiency_config.py --output "$DS_CONFIG" --global-batch-size "$GLOBAL_BATCH" \
    --micro-batch-size "$MICRO_BATCH" --seed "$SEED" "${CL_ARGS[@]}" "${LTD_ARGS[@]}"

# 3. Train.
MODEL_ARGS=(--num-layers "$NUM_LAYERS" --hidden-size "$HIDDEN" --num-attention-heads "$HEADS"
            --max-position-embeddings "$SEQ_LENGTH" --hidden-dropout 0.0 --attention-dropout 0.0)
TRAIN_ARGS=(--micro-batch-size "$MICRO_BATCH" --lr 2e-3 --min-lr 1e-4 --lr-decay-style cosine
            --lr-warmup-iters $(( ITERS / 10 )) --weight-decay 0.1 --adam-beta2 0.95 --clip-grad 1.0)
DE_ARGS=(--deepspeed --deepspeed_config "$DS_CONFIG" --data-efficiency-curriculum-learning
         --random-ltd)
LOG_ARGS=(--log-interval "${LOG_INTERVAL:-$(( ITERS / 20 > 0 ? ITERS / 20 : 1 ))}"
          --eval-interval "$ITERS" --eval-iters 2 --num-workers 1
          --save "$WORK/checkpoints" --save-interval "$ITERS")
"${LAUNCH[@]}" pretrain_gpt.py "${MODEL_ARGS[@]}" "${TRAIN_ARGS[@]}" "${RUN_SIZE_ARGS[@]}" \
    "${DATA_ARGS[@]}" "${TOKENIZER_ARGS[@]}" "${DE_ARGS[@]}" "${LOG_ARGS[@]}"

# 4. Evaluate: held-out loss of the validation split at full length (no truncation, no dropping),
#    and, when lm-evaluation-harness is installed (pip install -e ".[eval]"), the local zero-shot
#    tasks (EVAL_TASKS=paper adds the seed paper's task list, which needs the dataset hub).
"$PYTHON" tools/evaluate.py --load "$WORK/checkpoints" --data-path "$DATA/austen_gpt_text_document" \
    --split "$SPLIT" --split-part valid --json-output "$WORK/heldout.json"
if "$PYTHON" -c "import lm_eval" 2>/dev/null; then
    LOCAL_ONLY=$([ "${EVAL_TASKS:-local}" = paper ] && echo 0 || echo 1) \
        bash examples/data_efficiency/eval_zero_shot.sh "$WORK/checkpoints" "$WORK/lm_eval"
fi
