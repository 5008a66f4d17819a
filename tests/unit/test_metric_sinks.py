"""`send_vs`: one value at three x values; W&B (whose step must only grow) gets the iteration's."""

import types

from megatron.training import metrics


class Recorder(metrics.MetricSink):
    def __init__(self):
        self.rows = []

    def scalar(self, name, value, step):
        self.rows.append((name, value, step))


def test_send_vs_writes_the_value_at_iteration_samples_and_tokens():
    sink = Recorder()
    state = types.SimpleNamespace(iteration=3, consumed_train_samples=24, consumed_train_tokens=400)
    metrics.send_vs(sink, "lm loss", 1.5, state)
    assert sink.rows == [("lm loss", 1.5, 3), ("lm loss vs samples", 1.5, 24),
                         ("lm loss vs tokens", 1.5, 400)]  # fmt: skip


def test_wandb_gets_only_the_iteration_stepped_scalars():
    logged = []
    sink = metrics.WandbSink.__new__(metrics.WandbSink)  # no wandb package or login needed
    sink.wandb = types.SimpleNamespace(log=lambda row, step: logged.append((row, step)))
    state = types.SimpleNamespace(iteration=3, consumed_train_samples=24, consumed_train_tokens=400)
    metrics.send_vs(sink, "lm loss", 1.5, state)
    assert logged == [({"lm loss": 1.5}, 3)]
