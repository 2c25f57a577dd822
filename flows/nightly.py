"""Flow `nightly`: extract, train, register, promote, then infer on the inference source."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.infer import infer
from flows.promote import promote
from flows.runtime import run_id_of
from flows.train import train


@flow(name="nightly")
def nightly(root: str, model: str, labels: str | None = None, infer_source: str | None = None,
            out: str | None = None, config_file: str | None = None, overrides: dict[str, Any] | None = None,
            run_id: str | None = None) -> dict[str, Any]:
    run_id = run_id_of(run_id)  # one id for the whole chain
    trained = train(root, model, labels, config_file, overrides, run_id)
    version = trained["train"]["version"]
    promoted = promote(model, version, config_file, overrides, run_id)
    predicted = infer(infer_source or root, f"models:/{model}@{promoted['alias']}", out, config_file,
                      overrides, run_id)
    return {"train": trained, "promote": promoted, "infer": predicted,
            "failed": trained["failed"] + predicted["failed"]}

