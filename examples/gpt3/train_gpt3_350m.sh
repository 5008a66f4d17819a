#!/usr/bin/env bash
# GPT-3 350M: examples/gpt3/train_gpt3.sh with MODEL_SIZE=350M (see it for every variable).
#   DATA_PATH=data/my_text_document NNODES=1 bash examples/gpt3/train_gpt3_350m.sh
exec env MODEL_SIZE=350M bash "$(dirname "$0")/train_gpt3.sh" "$@"
