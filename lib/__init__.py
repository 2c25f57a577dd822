"""lstmpipe's pure library: sources, decoding, backbones, feature cache, LSTM, training, registry, inference.

Nothing here imports Prefect or Ray (an import-linter contract and a test hold that),
and nothing here reads the environment: values come in as arguments.
"""
