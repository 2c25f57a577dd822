"""The sequence classifiers, and nothing else: the loop lives in lib/train.py (nanoGPT's split).

Both networks take a zero- (or anything-) padded batch of per-frame feature vectors
and the true lengths, and never let padding reach the logits: a series gets the same
logits batched alone or beside longer ones. That is what makes batch inference
reproducible whatever the batch composition.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

KINDS = ("lstm", "mean")


class LSTMClassifier(nn.Module):
    """Per-frame projection, an LSTM over time, a linear head on the last valid hidden state (LRCN)."""

    def __init__(
        self,
        input_dim: int,
        num_classes: int,
        hidden_size: int = 128,
        num_layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_directions = 2 if bidirectional else 1
        # CNN features come in at very different scales per backbone; LayerNorm makes lr choices portable.
        self.norm = nn.LayerNorm(input_dim)
        self.proj = nn.Sequential(nn.Linear(input_dim, hidden_size), nn.GELU())
        self.lstm = nn.LSTM(
            hidden_size,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,  # nn.LSTM applies it between layers only
        )
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size * self.num_directions, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """x: (B, T, F) float; lengths: (B,) int64 on the CPU (what packing wants) -> logits (B, C)."""
        h = self.proj(self.norm(x))  # (B, T, H): per frame, so padded frames cannot touch valid ones
        packed = pack_padded_sequence(h, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(packed)  # h_n: (L * D, B, H), already back in input order
        last = h_n.view(self.lstm.num_layers, self.num_directions, x.shape[0], -1)[-1]  # (D, B, H)
        # Forward direction: state after the last valid frame; backward: after reading back to frame 0.
        last = last.transpose(0, 1).reshape(x.shape[0], -1)  # (B, D * H)
        return self.head(self.drop(last))  # (B, C)


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


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network: a registry stores this as JSON beside the state_dict."""

    kind: str  # "lstm" | "mean"
    input_dim: int  # per-frame feature size (the backbone's output width)
    num_classes: int
    hidden_size: int = 128  # LSTM units per direction; unused by "mean"
    num_layers: int = 1
    bidirectional: bool = False
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"ModelSpec.kind {self.kind!r} is not supported; use one of {', '.join(KINDS)}")
        if self.input_dim < 1 or self.num_classes < 2:
            raise ValueError(
                f"ModelSpec needs input_dim >= 1 and num_classes >= 2, got {self.input_dim} and {self.num_classes}"
            )

    def build(self) -> nn.Module:
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
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of to_dict; an unknown key is an error (a spec from a newer version must not half-load)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"ModelSpec: unknown keys {unknown}; known keys: {', '.join(sorted(known))}")
        return cls(**data)
