"""The sequence classifiers and the spec that rebuilds them; the loop lives in lib/training/loop.py.

Imports only numpy and torch: a registered model version carries this file as code
(lib/registry/mlflow_store.py), so it must load where lstmpipe is not installed.

Both networks take a zero- (or anything-) padded batch of per-frame feature vectors
and the true lengths, and never let padding reach the logits: a series gets the same
logits batched alone or beside longer ones. That is what makes batch inference
reproducible whatever the batch composition. The recurrent network packs the batch
(padding is never read); attention pooling masks the padded steps out of its softmax.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

KINDS = ("lstm", "mean")
CELLS = ("lstm", "gru")
POOLINGS = ("last", "attention")
INPUT_NORMS = ("layer", "series", "split")


class SeriesCentring(nn.Module):
    """Each series minus its own mean over its valid frames, over one scale fitted on training data.

    For classes that only change tells apart: a random-init or off-domain backbone puts most of
    a frame's features in a per-series level (anatomy, contrast, position) and a tenth in what
    moves. LayerNorm keeps that level, and a recurrent net then memorises series by it instead
    of reading the motion. Centring removes it; the training set's scale (a buffer, so it travels
    in the state_dict) keeps every series' amplitude comparable, which a per-frame norm would not.
    The mean spans the whole series, so per-step outputs see every frame's level, not only the
    past.
    """

    scale: torch.Tensor  # () the training frames' RMS once fitted; a buffer

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.ones(()))

    def fit(self, features: Sequence[np.ndarray]) -> None:
        """Set the scale to the root mean square of the centred training frames."""
        centred = np.concatenate([f - f.mean(axis=0) for f in features]).astype(np.float64)
        self.scale.fill_(max(float(np.sqrt(np.mean(centred**2))), 1e-12))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F), lengths: (B,) -> (B, T, F) centred and scaled; padding stays 0."""
        valid, mean = _series_mean(x, lengths)
        return (x - mean).masked_fill(~valid, 0.0) / self.scale


class LevelAndChange(nn.Module):
    """Each frame as two halves: its change (SeriesCentring) and its series' level (the series
    mean, LayerNorm'd, the same at every step).

    Classes told apart by how things move need the change, which the level swamps under a
    per-frame LayerNorm; classes told apart by what is seen need the level, which centring
    removes. Side by side, the network reads either (F -> 2F).
    """

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.change = SeriesCentring()
        self.level = nn.LayerNorm(input_dim)

    def fit(self, features: Sequence[np.ndarray]) -> None:
        self.change.fit(features)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F), lengths: (B,) -> (B, T, 2F); padding stays 0."""
        valid, mean = _series_mean(x, lengths)
        level = self.level(mean).expand_as(x).masked_fill(~valid, 0.0)
        return torch.cat([self.change(x, lengths), level], dim=-1)


def _series_mean(x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(valid (B, T, 1) bool, each series' mean over its valid frames (B, 1, F)) of x (B, T, F)."""
    lengths = lengths.to(x.device)
    valid = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])[..., None]
    mean = x.masked_fill(~valid, 0.0).sum(dim=1, keepdim=True) / lengths[:, None, None].to(x.dtype)
    return valid, mean


class LSTMClassifier(nn.Module):
    """An input norm, an optional projection, an LSTM or GRU over time, pooling, a head (LRCN).

    input_norm "layer": LayerNorm per frame. "series": SeriesCentring. "split": LevelAndChange.
    (Fit the last two on the training set.)

    pooling "last": the state after the last valid frame (forward direction) and after reading
    back to frame 0 (backward direction). "attention": a learned score per valid step, softmax
    over the valid steps only, the weighted sum of the recurrent outputs.
    """

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.2,
        cell: str = "lstm",
        input_proj: int | None = 128,
        pooling: str = "last",
        input_norm: str = "layer",
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_directions = 2 if bidirectional else 1
        self.pooling = pooling
        # CNN features come in at very different scales per backbone; either norm makes lr choices
        # portable.
        self.norm = _input_norm(input_norm, input_dim)
        width_in = 2 * input_dim if input_norm == "split" else input_dim
        # Per frame, so padded frames cannot touch valid ones; None feeds the normalised features
        # straight in.
        self.proj = (
            nn.Sequential(nn.Linear(width_in, input_proj), nn.GELU())
            if input_proj
            else nn.Identity()
        )
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(
            input_proj or width_in,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,  # applied between layers only
        )
        width = hidden_size * self.num_directions
        self.attention = nn.Linear(width, 1) if pooling == "attention" else None
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F) float; lengths: (B,) int64 on the CPU (for packing) -> logits (B, C)."""
        batch = x.shape[0]
        h = self._inputs(x, lengths)  # (B, T, P)
        packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, h_n = self.rnn(packed)  # h_n: (L * D, B, H) in input order; an LSTM also returns c_n
        if self.attention is None:
            h_n = h_n[0] if isinstance(h_n, tuple) else h_n
            last = h_n.view(self.rnn.num_layers, self.num_directions, batch, -1)[-1]  # (D, B, H)
            pooled = last.transpose(0, 1).reshape(batch, -1)  # (B, D * H)
        else:
            out, _ = pad_packed_sequence(
                out, batch_first=True, total_length=x.shape[1]
            )  # (B, T, D * H), 0 past ends
            valid = (
                torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None]
            )  # (B, T)
            scores = self.attention(out).squeeze(-1).float()  # (B, T)
            weights = torch.softmax(
                scores.masked_fill(~valid, float("-inf")), dim=1
            )  # (B, T), 0 on padding
            pooled = (weights.unsqueeze(-1).to(out.dtype) * out).sum(dim=1)  # (B, D * H)
        return self.head(self.drop(pooled))  # (B, C)

    def per_step(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-timestep logits (B, T, C) and recurrent outputs (B, T, D * H); steps past a length
        are padding.

        Step t's logits are the head applied to the recurrent output at t: with forward-only "last"
        pooling, the prediction had the series ended at frame t (the last valid step's logits are
        forward()'s). The outputs are the temporal features downstream analyses ask for.
        """
        h = self._inputs(x, lengths)  # (B, T, P)
        packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(
            self.rnn(packed)[0], batch_first=True, total_length=x.shape[1]
        )  # (B, T, D * H)
        return self.head(out), out

    def _inputs(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Normalised, projected frames (B, T, P): what the recurrent layer reads."""
        normed = self.norm(x) if isinstance(self.norm, nn.LayerNorm) else self.norm(x, lengths)
        return self.proj(normed)


def _input_norm(name: str, input_dim: int) -> nn.LayerNorm | SeriesCentring | LevelAndChange:
    if name == "layer":
        return nn.LayerNorm(input_dim)
    return SeriesCentring() if name == "series" else LevelAndChange(input_dim)


class MeanPoolClassifier(nn.Module):
    """The order-blind baseline: average the valid frames, then a linear head.

    If this matches the LSTM on a data set, the order of frames carries no signal there.
    """

    def __init__(self, input_dim: int, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.norm = nn.LayerNorm(input_dim)
        self.head = nn.Linear(input_dim, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F) float; lengths: (B,) int64 -> logits (B, C)."""
        lengths = lengths.to(x.device)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]  # (B, T)
        # masked_fill, not a multiply: NaN or inf in padding must not survive (0 * NaN = NaN).
        summed = x.masked_fill(~valid[..., None], 0.0).sum(dim=1)  # (B, F)
        mean = summed / lengths[:, None].to(x.dtype)  # (B, F)
        return self.head(self.norm(mean))  # (B, C)

    def per_step(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each frame's logits alone (B, T, C): the baseline's view of that frame.

        It has no hidden state, so the states are (B, T, 0).
        """
        return self.head(self.norm(x)), x.new_zeros(*x.shape[:2], 0)


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network: a registry stores this as JSON beside the state_dict.

    The defaults serve specs built by hand (tests, notebooks); training sets every field from its
    TrainConfig (lib/training/loop.py: model_spec).
    """

    kind: str  # "lstm" (the recurrent network, whatever its cell) | "mean"
    input_dim: int  # per-frame feature size (the backbone's output width)
    num_classes: int
    hidden_size: int = 128  # recurrent units per direction; unused by "mean"
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.2
    cell: str = "lstm"  # "lstm" | "gru"
    # width of the per-frame Linear + GELU after the input norm; None = no projection
    input_proj: int | None = 128
    pooling: str = "last"  # "last" | "attention"
    input_norm: str = "layer"  # "layer" | "series" | "split"; unused by "mean"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"ModelSpec.kind {self.kind!r} is not supported; use one of {', '.join(KINDS)}"
            )
        if self.cell not in CELLS:
            raise ValueError(
                f"ModelSpec.cell {self.cell!r} is not supported; use one of {', '.join(CELLS)}"
            )
        if self.pooling not in POOLINGS:
            raise ValueError(
                f"ModelSpec.pooling {self.pooling!r} is not supported; "
                f"use one of {', '.join(POOLINGS)}"
            )
        if self.input_norm not in INPUT_NORMS:
            raise ValueError(
                f"ModelSpec.input_norm {self.input_norm!r} is not supported; "
                f"use one of {', '.join(INPUT_NORMS)}"
            )
        if self.input_dim < 1 or self.num_classes < 2:
            raise ValueError(
                "ModelSpec needs input_dim >= 1 and num_classes >= 2, "
                f"got {self.input_dim} and {self.num_classes}"
            )
        if self.input_proj is not None and self.input_proj < 1:
            raise ValueError(
                f"ModelSpec.input_proj {self.input_proj!r}: "
                "give a width >= 1, or None for no projection"
            )

    def build(self) -> LSTMClassifier | MeanPoolClassifier:
        """A freshly initialised module (seed torch first for reproducible weights)."""
        if self.kind == "mean":
            return MeanPoolClassifier(self.input_dim, self.num_classes)
        return LSTMClassifier(
            self.input_dim,
            self.num_classes,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bidirectional=self.bidirectional,
            dropout=self.dropout,
            cell=self.cell,
            input_proj=self.input_proj,
            pooling=self.pooling,
            input_norm=self.input_norm,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of to_dict; an unknown key is an error (a spec from a newer version must not
        half-load)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"ModelSpec: unknown keys {unknown}; known keys: {', '.join(sorted(known))}"
            )
        return cls(**data)
