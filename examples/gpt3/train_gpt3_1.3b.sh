#!/usr/bin/env bash
# GPT-3 1.3B: examples/gpt3/train_gpt3.sh with MODEL_SIZE=1.3B (see it for every variable).
#   DATA_PATH=data/my_text_document NNODES=1 bash examples/gpt3/train_gpt3_1.3b.sh
exec env MODEL_SIZE=1.3B bash "$(dirname "$0")/train_gpt3.sh" "$@"
