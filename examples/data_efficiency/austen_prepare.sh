#!/usr/bin/env bash
# Prepare the embedded Jane Austen corpus for the tiny data-efficiency runs (the same steps as
# examples/quickstart.sh): JSONL, a tokenizer trained on it, Megatron .bin/.idx files.
#
#   bash examples/data_efficiency/austen_prepare.sh gpt  runs/austen_data   # BPE, documents
#   bash examples/data_efficiency/austen_prepare.sh bert runs/austen_data   # WordPiece, sentences
#
# Writes, under the folder:
#   gpt:  gpt_tokenizer/{vocab.json,merges.txt}, austen_gpt_text_document.{bin,idx}
#   bert: bert_tokenizer/vocab.txt,             austen_bert_text_sentence.{bin,idx}
# Each step is skipped when its output exists (delete the folder to start over).
set -euo pipefail
cd "$(dirname "$0")/../.."

KIND=${1:?usage: austen_prepare.sh gpt|bert FOLDER}
DATA=${2:?usage: austen_prepare.sh gpt|bert FOLDER}
VOCAB=${VOCAB:-4096}      # size of the tokenizer trained on the corpus
WORKERS=${WORKERS:-2}     # preprocessing processes
PYTHON=${PYTHON:-python}
mkdir -p "$DATA"

# 1. The corpus as JSONL, one document per chapter.
[ -f "$DATA/austen.jsonl" ] || "$PYTHON" tools/austen_to_jsonl.py --output "$DATA/austen.jsonl"

case "$KIND" in
  gpt)
    # 2. A byte-level BPE tokenizer (GPT-2 file format), 3. documents with an end-of-document token.
    [ -f "$DATA/gpt_tokenizer/vocab.json" ] || "$PYTHON" tools/train_tokenizer.py \
        --input "$DATA/austen.jsonl" --type bpe --vocab-size "$VOCAB" --output-dir "$DATA/gpt_tokenizer"
    [ -f "$DATA/austen_gpt_text_document.idx" ] || "$PYTHON" tools/preprocess_data.py \
        --input "$DATA/austen.jsonl" --output-prefix "$DATA/austen_gpt" \
        --tokenizer-type GPT2BPETokenizer --vocab-file "$DATA/gpt_tokenizer/vocab.json" \
        --merge-file "$DATA/gpt_tokenizer/merges.txt" --append-eod --workers "$WORKERS"
    ;;
  bert)
    # 2. A lower-cased WordPiece tokenizer (BERT vocab.txt), 3. one sequence per sentence.
    [ -f "$DATA/bert_tokenizer/vocab.txt" ] || "$PYTHON" tools/train_tokenizer.py \
        --input "$DATA/austen.jsonl" --type wordpiece --vocab-size "$VOCAB" \
        --output-dir "$DATA/bert_tokenizer"
    [ -f "$DATA/austen_bert_text_sentence.idx" ] || "$PYTHON" tools/preprocess_data.py \
        --input "$DATA/austen.jsonl" --output-prefix "$DATA/austen_bert" \
        --tokenizer-type BertWordPieceLowerCase --vocab-file "$DATA/bert_tokenizer/vocab.txt" \
        --split-sentences --workers "$WORKERS"
    ;;
  *)
    echo "austen_prepare.sh: unknown kind '$KIND'; use gpt or bert" >&2
    exit 2
    ;;
esac
