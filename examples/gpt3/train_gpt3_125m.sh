#!/usr/bin/env bash
# GPT-3 125M: examples/gpt3/train_gpt3.sh with MODEL_SIZE=125M (see it for every variable).
#   DATA_PATH=data/my_text_document NNODES=1 bash examples/gpt3/train_gpt3_125m.sh
exec env MODEL_SIZE=125M bash "$(dirname "$0")/train_gpt3.sh" "$@"
