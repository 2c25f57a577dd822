"""The model card: one Markdown page logged beside every registered version (values in, text
out)."""

from __future__ import annotations

import json
from typing import Any

HEADLINE = ("accuracy", "macro_f1", "top3_accuracy", "top5_accuracy")


def render(
    *,
    model_name: str,
    version: str,
    labels: list[str],
    recipe: dict[str, Any],
    snapshot: dict[str, Any],
    metrics: dict[str, dict[str, Any]],
    baseline: dict[str, dict[str, Any]],
    spec: dict[str, Any],
    params: dict[str, Any],
    tags: dict[str, str],
) -> str:
    """Markdown: what the model is, what it was trained on, how well it does next to the
    baseline, its limits."""
    lines = [
        f"# {model_name} v{version}",
        "",
        f"An LSTM sequence classifier over per-frame CNN features ({recipe.get('backbone', '?')} "
        f"features, recipe `{recipe.get('recipe_id', '?')}`), {len(labels)} classes: "
        + ", ".join(f"`{label}`" for label in labels)
        + ".",
        "",
        "## Intended use",
        "",
        "Classifying whole series (videos, image series, DICOM series, time stacks) of the kind "
        "it was trained on, through `lstmpipe infer SOURCE --model models:/"
        f"{model_name}/{version}`, which extracts features with this model's own recipe. "
        "The output is one probability per class for each series.",
        "",
        "## Data snapshot",
        "",
        *[f"- {key}: `{value}`" for key, value in snapshot.items()],
        "",
        "## Metrics (LSTM vs frame-averaging baseline)",
        "",
        "The baseline averages the frames and ignores their order: the gap is what time adds.",
        "",
        "| split | metric | LSTM | baseline |",
        "|---|---|---|---|",
        *[
            f"| {split} | {key} | {_num(values.get(key))} "
            f"| {_num(baseline.get(split, {}).get(key))} |"
            for split, values in metrics.items()
            for key in HEADLINE
            if key in values
        ],
        "",
        "Per-class precision and recall are in `per_class_report.csv`; the confusion matrix in "
        "`confusion_matrix.png`.",
        "",
        "## Limitations",
        "",
        "- Scores hold for series like the training data: same sources, sampling and feature "
        "recipe. Inputs made with another recipe are refused at inference, but a shift in "
        "content (cameras, scanners, seasons, classes never seen) is not detected.",
        "- It always answers with one of the classes above; there is no 'none of these'.",
        f"- The test split holds {snapshot.get('n_test', '?')} series: small splits give wide "
        "error bars.",
        "- Features come from a frozen backbone; what it cannot see, the LSTM cannot learn.",
        "",
        "## Network",
        "",
        "```json",
        json.dumps(spec, indent=1, sort_keys=True),
        "```",
        "",
        "## Training configuration",
        "",
        *[f"- {key}: `{value}`" for key, value in sorted(params.items())],
        "",
        "## Provenance",
        "",
        *[f"- {key}: `{value}`" for key, value in sorted(tags.items())],
        "",
    ]
    return "\n".join(lines)


def _num(value: Any) -> str:
    return "" if value is None else f"{float(value):.4f}"
