"""Stage 6, infer: the predictor, the predictions table and the domain outputs."""
