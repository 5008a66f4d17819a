"""Curriculum learning, the data side of data efficiency: difficulty metrics, their analysis,
pacing schedules, the curriculum sampler and sequence-length post-processing.

Datasets never import this package: `analysis.attach_metrics` scores a dataset from the outside,
through the `sample_source()` the dataset exposes. Submodules are imported explicitly (e.g.
`from megatron.core.curriculum import metrics`); this package imports nothing on its own so that
each piece stays cheap to load.
"""
