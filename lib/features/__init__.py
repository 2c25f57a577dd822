"""Stages 2-3, extract and cache: backbone, feature recipe, extraction and the Parquet cache."""
