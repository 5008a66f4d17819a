"""megatron/evaluation/scoring.py: batched scoring and greedy decoding keep request order and
do not depend on the batch size (a tiny random GPT; no lm-evaluation-harness needed)."""

import pytest
import torch

from megatron.core.models import GPTModel
from megatron.core.transformer.config import TransformerConfig
from megatron.evaluation.scoring import CausalLMScorer, GreedyRequest


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2)
    model = GPTModel(cfg, 32, 12).eval()
    with torch.no_grad():
        for p in model.parameters():  # finite random weights whatever the default init
            p.normal_(0.0, 0.3)
    return model


def test_scores_and_generations_do_not_depend_on_batch_size(model):
    pairs = [([1, 2, 3], [4]), ([5], [6, 7, 8, 9]), ([1] * 10, [2, 3, 4, 5]), ([9, 8], [7, 6])]
    one, three = CausalLMScorer(model, 12, 1), CausalLMScorer(model, 12, 3)
    a, b = one.score(pairs), three.score(pairs)
    assert [x[1] for x in a] == [x[1] for x in b]
    assert [x[0] for x in b] == pytest.approx([x[0] for x in a], abs=1e-5)
    # the third pair's context is cut on the left to the last 12 + 1 tokens: nine 1s remain
    assert one.score([([1] * 9, [2, 3, 4, 5])])[0][0] == pytest.approx(a[2][0], abs=1e-5)
    reqs = [GreedyRequest([1, 2], 5), GreedyRequest([3] * 9, 6), GreedyRequest([4], 0)]
    assert one.greedy(reqs, eod=None) == three.greedy(reqs, eod=None)
    assert [len(g) for g in one.greedy(reqs, eod=None)] == [5, 6, 0]


def test_errors_name_the_fix(model):
    scorer = CausalLMScorer(model, 4, 1)
    with pytest.raises(ValueError, match="loglikelihood_rolling"):
        scorer.score([([1], [2] * 5)])
    with pytest.raises(ValueError, match="empty context"):
        scorer.score([([], [2])])
