"""Stage 5, register and promote: the MLflow side, the promotion gate, model cards and reports."""
