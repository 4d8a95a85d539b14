"""Tasks: what a model's outputs are scored by (loss, metrics, evaluation outputs)."""
