"""Stage 4, train: the sequence model, its loop, splits, metrics, the search, the model bundle."""
