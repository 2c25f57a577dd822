"""Stages 2-3, extract and cache: the backbone, the feature recipe, extraction and the Parquet cache."""
