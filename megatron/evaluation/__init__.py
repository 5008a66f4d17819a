"""Scoring trained checkpoints with external evaluation harnesses (lm-evaluation-harness)."""
