"""MLflow "models from code" entry point: MLflow runs this file to load an lstmpipe model.

Logging the model as code instead of a cloudpickled object means loading it never
unpickles anything: the network is rebuilt from its bundle files and its weights load as
tensors only (lib/training/bundle_files.py).

Everything this file imports from lstmpipe travels with each version as code
(carried_code.py), and the rest is torch, numpy and mlflow, the version's pinned
requirements: so `mlflow.pyfunc.load_model` works in an environment that never installed
lstmpipe. Keep its lstmpipe imports to the few modules that need nothing
else (tests/integration/test_model_portable.py loads a version in such an environment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from mlflow.models import set_model
from mlflow.pyfunc.model import PythonModel
from mlflow.types.type_hints import TypeFromExample

from lstmpipe.lib.training.bundle_files import StoredBundle, read_bundle


class SequenceModel(PythonModel):
    """{"features": (B, T, F) float32 zero-padded, "lengths": (B,) int64} -> (B, C) probabilities.

    Column c is the class labels[c] (the version's `labels` tag, and `stored.labels`).
    """

    stored: StoredBundle

    def load_context(self, context: Any) -> None:
        self.stored = read_bundle(Path(context.artifacts["bundle"]))

    # TypeFromExample: the input's type is the logged example's (a dict of arrays), which
    # MLflow's list-only type hints cannot spell; the explicit signature validates it. (Without
    # a hint, MLflow warns at every import of this class.)
    def predict(
        self, context: Any, model_input: TypeFromExample, params: dict | None = None
    ) -> np.ndarray:
        batch = cast(dict[str, np.ndarray], model_input)
        features = torch.as_tensor(np.asarray(batch["features"], np.float32))  # (B, T, F)
        lengths = torch.as_tensor(np.asarray(batch["lengths"], np.int64))  # (B,)
        if len(features) == 0:
            return np.zeros((0, self.stored.spec.num_classes), np.float32)
        if lengths.shape != features.shape[:1] or not bool(
            ((lengths >= 1) & (lengths <= features.shape[1])).all()
        ):
            raise ValueError(
                f"lengths {lengths.tolist()}: give one per series, each from 1 to the padded "
                f"length {features.shape[1]} of features {tuple(features.shape)}"
            )
        with torch.inference_mode():
            logits = self.stored.module(features, lengths)  # (B, C); padding never reaches it
        return torch.softmax(logits.float(), dim=-1).numpy()


set_model(SequenceModel())
