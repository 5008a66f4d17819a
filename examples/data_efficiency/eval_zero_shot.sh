#!/usr/bin/env bash
# Zero-shot evaluation of a GPT checkpoint (any TP / PP layout) with lm-evaluation-harness:
# the seed paper's task list (needs the dataset hub) and the shipped local tasks (offline).
#
#   bash examples/data_efficiency/eval_zero_shot.sh CHECKPOINT_DIR [OUTPUT_DIR]
#   LOCAL_ONLY=1 ...   only the local tasks (lambada_austen, austen_ppl), no network needed
#   DRY_RUN=1 ...      print the command instead of running it
# Needs `pip install -e ".[eval]"`. Scores land in OUTPUT_DIR (default CHECKPOINT_DIR/../eval).
set -euo pipefail
cd "$(dirname "$0")/../.."

CKPT=${1:?usage: eval_zero_shot.sh CHECKPOINT_DIR [OUTPUT_DIR]}
OUT=${2:-$CKPT/../eval}
PYTHON=${PYTHON:-python}
BATCH=${BATCH:-8}
DEVICE=${DEVICE:-$("$PYTHON" -c "import torch; print('cuda' if torch.cuda.is_available() else 'cpu')")}

# The paper's 19 zero-shot tasks (Megatron-DeepSpeed's data-efficiency evaluation list, under
# lm-evaluation-harness 0.4's names) and wikitext for perplexity.
PAPER_TASKS=record,triviaqa,hellaswag,arc_challenge,arc_easy,race,multirc,openbookqa
PAPER_TASKS+=,lambada_openai,webqs,winogrande,piqa,anli_r1,anli_r2,anli_r3,boolq,copa,rte,wsc
PAPER_TASKS+=,wikitext
LOCAL_TASKS=lambada_austen,austen_ppl
TASKS=$LOCAL_TASKS
[ "${LOCAL_ONLY:-0}" = 1 ] || TASKS+=,$PAPER_TASKS

CMD=("$PYTHON" -m megatron.evaluation.lm_eval_cli --model megatron_de --model_args "load=$CKPT"
     --tasks "$TASKS" --include_path megatron/evaluation/tasks --batch_size "$BATCH"
     --device "$DEVICE" --output_path "$OUT")
if [ "${DRY_RUN:-0}" = 1 ]; then printf '%q ' "${CMD[@]}"; echo; exit 0; fi
if ! "$PYTHON" -c "import lm_eval" 2>/dev/null; then
    echo "eval_zero_shot.sh: needs lm-evaluation-harness: pip install -e \".[eval]\"" >&2
    exit 2
fi
exec "${CMD[@]}"
