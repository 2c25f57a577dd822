"""MLflow "models from code" entry point: MLflow runs this file to load an lstmpipe model.

Logging the model as code instead of a cloudpickled object means loading it never
unpickles anything: the network is rebuilt from its bundle (see lib/training/bundle.py).
"""

import mlflow

from lstmpipe.lib.registry.mlflow_store import SequenceModel

mlflow.models.set_model(SequenceModel())
