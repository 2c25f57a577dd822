"""The networks: padding never reaches the logits; a ModelSpec + state_dict rebuilds the same model."""

from __future__ import annotations

import json

import pytest
import torch

from lib.model import LSTMClassifier, MeanPoolClassifier, ModelSpec

F, C = 6, 3


def _padded(seqs: list[torch.Tensor], fill: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad with `fill` (not zeros) so that any leak shows up in the logits."""
    x = torch.full((len(seqs), max(len(s) for s in seqs), F), fill)  # (B, T, F)
    for i, s in enumerate(seqs):
        x[i, : len(s)] = s
    return x, torch.tensor([len(s) for s in seqs], dtype=torch.int64)


@pytest.mark.parametrize(
    "model",
    [
        LSTMClassifier(F, C, hidden_size=16),
        LSTMClassifier(F, C, hidden_size=16, num_layers=2, bidirectional=True, dropout=0.3),
        MeanPoolClassifier(F, C),
    ],
    ids=["lstm", "bilstm-2-layers", "mean"],
)
@pytest.mark.parametrize("fill", [0.0, 1e3, float("nan")])
def test_logits_do_not_depend_on_padding_or_batch_neighbours(model: torch.nn.Module, fill: float) -> None:
    torch.manual_seed(0)
    model.eval()
    short = torch.randn(3, F)
    others = [torch.randn(9, F), torch.randn(5, F), torch.randn(12, F)]
    alone = model(*_padded([short], fill))  # (1, C)
    batched = model(*_padded([others[0], short, *others[1:]], fill))  # (4, C)
    assert batched.shape == (4, C)
    assert torch.allclose(alone[0], batched[1], atol=1e-5)
    assert torch.isfinite(batched).all()


def test_mean_pool_averages_only_the_valid_frames() -> None:
    torch.manual_seed(0)
    model = MeanPoolClassifier(F, C).eval()
    frames = torch.randn(4, F)
    x, lengths = _padded([frames, torch.randn(10, F)], fill=float("nan"))
    expected = model.head(model.norm(frames.mean(dim=0)))  # (C,)
    assert torch.allclose(model(x, lengths)[0], expected, atol=1e-6)


def test_bidirectional_head_sees_both_directions() -> None:
    model = LSTMClassifier(F, C, hidden_size=8, bidirectional=True)
    assert model.head.in_features == 16
    assert model(torch.randn(2, 5, F), torch.tensor([5, 2])).shape == (2, C)


@pytest.mark.parametrize("kind", ["lstm", "mean"])
def test_spec_and_state_dict_rebuild_the_same_model(kind: str, tmp_path) -> None:
    spec = ModelSpec(kind=kind, input_dim=F, num_classes=C, hidden_size=12, num_layers=2, bidirectional=True)
    torch.manual_seed(1)
    model = spec.build().eval()
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_dict()))

    loaded_spec = ModelSpec.from_dict(json.loads((tmp_path / "spec.json").read_text()))
    torch.manual_seed(2)  # different init: the weights must come from the file
    rebuilt = loaded_spec.build().eval()
    rebuilt.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))

    x, lengths = torch.randn(3, 7, F), torch.tensor([7, 4, 1])
    assert loaded_spec == spec
    assert torch.allclose(model(x, lengths), rebuilt(x, lengths), atol=1e-6)


def test_spec_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="'gru'"):
        ModelSpec(kind="gru", input_dim=F, num_classes=C)
    with pytest.raises(ValueError, match="hidden"):
        ModelSpec.from_dict({"kind": "lstm", "input_dim": F, "num_classes": C, "hidden": 3})
    with pytest.raises(ValueError, match="num_classes"):
        ModelSpec(kind="lstm", input_dim=F, num_classes=1)
