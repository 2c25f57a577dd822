"""Reading a state_dict that may be hostile: backbone weights, registered models' weights.pt."""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from lstmpipe.lib.errors import ConfigError


def load_state_dict(path: Path, what: str) -> dict:
    """torch.load(weights_only=True); torch's errors become one ConfigError naming `what` and file.

    weights_only refuses any pickled object but tensors and containers, so a payload never runs;
    torch's own message on that refusal advises weights_only=False, which must never be followed.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ConfigError(
            f"{what}: {path} is not a plain state_dict of tensors "
            "(refused: loading it could run code); save model.state_dict() instead"
        ) from exc
    except (
        Exception
    ) as exc:  # torch raises anything on a corrupt file (RuntimeError, EOFError, IndexError, ...)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"{what}: {path} is not a readable state_dict file ({first}); "
            "save it again with torch.save(model.state_dict(), path)"
        ) from exc
