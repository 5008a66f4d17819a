#!/usr/bin/env bash
# Curriculum-learning analysis of the paper runs' training data: every sample of the train split
# scored with vocabulary rarity by tools/analyze_data.py, one worker per torchrun process (CPU
# work: use many processes, on one node or several), written in DeepSpeed DataAnalyzer's layout.
#
#   MODEL=gpt  DATA_PATH=data/pile_text_document       NPROC_PER_NODE=32 \
#       bash examples/data_efficiency/analyze_data.sh
#   MODEL=bert DATA_PATH=data/pile_bert_text_sentence  NPROC_PER_NODE=32 \
#       bash examples/data_efficiency/analyze_data.sh
#
# It runs the model's launcher (gpt_1.3b.sh / bert_large.sh) with STAGE=analyze, so the split,
# sequence length, seed, sample count and index cache are exactly those training uses: the
# analysis files then match the training samples one for one. Outputs go to $ANALYSIS
# (default runs/data_efficiency/<model>_analysis). A worker that failed can be re-run alone:
# `... tools/analyze_data.py <same flags> --worker-id W --num-workers K`; finished shards are kept.
# DRY_RUN=1 prints the command.
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-gpt}                # gpt | bert
export NPROC_PER_NODE=${NPROC_PER_NODE:-$(nproc)}
case "$MODEL" in
  gpt)  exec env STAGE=analyze bash gpt_1.3b.sh "$@" ;;
  bert) exec env STAGE=analyze bash bert_large.sh "$@" ;;
  *) echo "MODEL must be gpt or bert, got '$MODEL'" >&2; exit 2 ;;
esac
