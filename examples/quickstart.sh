#!/usr/bin/env bash
# Quickstart on a CPU laptop: install, preprocess the embedded Jane Austen corpus with a tokenizer
# trained on it, train a tiny GPT for a few minutes with 2 data-parallel processes (gloo), watch the
# validation loss fall, save a checkpoint and sample a few sentences from it.
#
#   bash examples/quickstart.sh                 # everything under runs/quickstart
#   ITERS=100 NPROC=1 bash examples/quickstart.sh
#
# Re-running reuses the tokenizer and the preprocessed data and resumes from the last checkpoint
# (delete runs/quickstart to start over).
set -euo pipefail
cd "$(dirname "$0")/.."

WORK=${WORK:-runs/quickstart}
NPROC=${NPROC:-2}            # data-parallel processes
ITERS=${ITERS:-300}          # optimizer steps
VOCAB=${VOCAB:-4096}         # size of the tokenizer trained on the corpus
PYTHON=${PYTHON:-python}

# 1. Install (CPU torch first, so pip never pulls a multi-GB CUDA build), then this package.
"$PYTHON" -c "import torch" 2>/dev/null || "$PYTHON" -m pip install --quiet torch==2.13.0
# (Re)installed when the C++ helpers are missing or a stale build; megatron/core/kernels.py decides.
CHECK="from megatron.core import kernels as k; raise SystemExit(not k.available(k.DATASET_HELPERS))"
"$PYTHON" -c "$CHECK" 2>/dev/null || "$PYTHON" -m pip install --quiet -e .

mkdir -p "$WORK"
# 2. The embedded corpus as JSONL, one document per chapter.
[ -f "$WORK/austen.jsonl" ] || "$PYTHON" tools/austen_to_jsonl.py --output "$WORK/austen.jsonl"

# 3. A small byte-level BPE tokenizer trained on it (GPT-2 file format).
[ -f "$WORK/tokenizer/vocab.json" ] || "$PYTHON" tools/train_tokenizer.py --input "$WORK/austen.jsonl" \
    --type bpe --vocab-size "$VOCAB" --output-dir "$WORK/tokenizer"
TOKENIZER_ARGS=(--tokenizer-type GPT2BPETokenizer --vocab-file "$WORK/tokenizer/vocab.json"
                --merge-file "$WORK/tokenizer/merges.txt")

# 4. Preprocess into Megatron's .bin/.idx format.
[ -f "$WORK/austen_text_document.idx" ] || "$PYTHON" tools/preprocess_data.py --input "$WORK/austen.jsonl" \
    --output-prefix "$WORK/austen" "${TOKENIZER_ARGS[@]}" --append-eod --workers 2

# 5. Train a tiny GPT.
MODEL_ARGS=(--num-layers 4 --hidden-size 256 --num-attention-heads 4 --seq-length 128
            --max-position-embeddings 128 --hidden-dropout 0.0 --attention-dropout 0.0)
TRAIN_ARGS=(--micro-batch-size 8 --global-batch-size 32 --train-iters "$ITERS"
            --lr 2e-3 --min-lr 1e-4 --lr-decay-style cosine --lr-warmup-iters 20
            --weight-decay 0.1 --adam-beta2 0.95 --clip-grad 1.0 --seed 1234)
DATA_ARGS=(--data-path "$WORK/austen_text_document" --split 95,5,0 --num-workers 1)
LOG_ARGS=(--log-interval 10 --eval-interval 50 --eval-iters 4
          --save "$WORK/checkpoints" --save-interval 100 --load "$WORK/checkpoints")
OMP_NUM_THREADS=$(( $(nproc) / NPROC > 0 ? $(nproc) / NPROC : 1 )) \
"$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC" pretrain_gpt.py \
    "${MODEL_ARGS[@]}" "${TRAIN_ARGS[@]}" "${DATA_ARGS[@]}" "${TOKENIZER_ARGS[@]}" "${LOG_ARGS[@]}"

# 6. Sample from the checkpoint.
"$PYTHON" tools/generate.py --load "$WORK/checkpoints" --max-new-tokens 40 --top-k 20 --temperature 0.8 \
    --prompt "It is a truth universally acknowledged" --prompt "Emma Woodhouse" --prompt "Mr. Darcy"
