"""Data-efficiency techniques: curriculum learning (difficulty metrics, data analysis, pacing,
sampling) and random layerwise token dropping.

Submodules are imported explicitly (e.g. `from megatron.core.data_efficiency import metrics`);
this package imports nothing on its own so that each piece stays cheap to load.
"""
