"""lstmpipe's pure library, one folder per stage: sources, features, training, registry,
inference, ops, and the demo samples.

Nothing here imports Prefect or Ray (an import-linter contract and a test hold that),
and nothing here reads the environment: values come in as arguments.
"""
