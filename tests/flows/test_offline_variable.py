"""LSTMPIPE_OFFLINE, read with the rest of the environment (flows/runtime.py): backbone.offline."""

from __future__ import annotations

from pathlib import Path

from lstmpipe.flows.runtime import load_runtime


def test_lstmpipe_offline_is_backbone_offline(tmp_path: Path) -> None:
    env = {"LSTMPIPE_HOME": str(tmp_path)}
    assert not load_runtime(env=env).config.backbone.offline  # downloads on first use
    assert load_runtime(env={**env, "LSTMPIPE_OFFLINE": "1"}).config.backbone.offline
    both = {**env, "LSTMPIPE_OFFLINE": "1", "LSTMPIPE_BACKBONE_OFFLINE": "false"}
    assert not load_runtime(env=both).config.backbone.offline  # the section's own name wins
