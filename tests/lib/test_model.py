"""The networks: padding never reaches the logits; a ModelSpec + state_dict rebuilds the model."""

from __future__ import annotations

import json

import pytest
import torch

from lstmpipe.lib.training.model import (
    LevelAndChange,
    LSTMClassifier,
    MeanPoolClassifier,
    ModelSpec,
    SeriesCentring,
)

F, C = 6, 3
RECURRENT = [
    {"cell": cell, "pooling": pooling, "bidirectional": bidirectional, "input_proj": proj}
    for cell in ("lstm", "gru")
    for pooling in ("last", "attention")
    for bidirectional in (False, True)
    for proj in (8, None)
]


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
def test_logits_do_not_depend_on_padding_or_batch_neighbours(
    model: torch.nn.Module, fill: float
) -> None:
    _check_batch_invariance(model, fill)


@pytest.mark.parametrize("options", RECURRENT, ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("fill", [1e3, float("nan")])
def test_every_cell_and_pooling_ignores_padding_and_batch_neighbours(
    options: dict, fill: float
) -> None:
    torch.manual_seed(0)
    _check_batch_invariance(
        ModelSpec("lstm", F, C, hidden_size=8, num_layers=2, **options).build(), fill
    )


@pytest.mark.parametrize(
    "options", [{"pooling": "last"}, {"pooling": "attention", "bidirectional": True}]
)
@pytest.mark.parametrize("fill", [1e3, float("nan")])
@pytest.mark.parametrize("norm", ["series", "split"])
def test_series_norms_ignore_padding_and_batch_neighbours(
    options: dict, fill: float, norm: str
) -> None:
    torch.manual_seed(0)
    _check_batch_invariance(
        ModelSpec("lstm", F, C, hidden_size=8, input_norm=norm, **options).build(), fill
    )


def test_series_centring_removes_each_series_level_and_keeps_its_amplitude() -> None:
    norm = SeriesCentring()
    norm.scale.fill_(2.0)
    motion = torch.randn(5, F)
    x, lengths = _padded([motion, motion + 7.0, 3.0 * motion], fill=float("nan"))
    out = norm(x, lengths)  # (3, 5, F)
    expected = (motion - motion.mean(dim=0)) / 2.0
    assert torch.allclose(out[0], expected, atol=1e-5) and torch.allclose(
        out[1], expected, atol=1e-5
    )
    assert torch.allclose(
        out[2], 3.0 * expected, atol=1e-5
    )  # one scale for all: a bigger beat stays bigger
    norm.fit([motion.numpy(), 3.0 * motion.numpy()])
    assert norm.scale.item() == pytest.approx(
        float(torch.sqrt(((motion - motion.mean(0)) ** 2).mean() * 5)), rel=1e-5
    )


def test_level_and_change_keeps_the_level_beside_the_centred_frames() -> None:
    norm = LevelAndChange(F)
    motion, elsewhere = torch.randn(5, F), 3.0 * torch.randn(F)
    x, lengths = _padded([motion, motion + elsewhere, motion[:3]], fill=float("nan"))
    out = norm(x, lengths)  # (3, 5, 2F)
    change, level = out[..., :F], out[..., F:]
    # the same motion at another level: the same change, another level
    assert torch.allclose(change[0], change[1], atol=1e-5)
    assert not torch.allclose(level[0], level[1], atol=1e-3)
    # the level is the LayerNorm'd series mean, at every valid step; padding stays 0
    expected = torch.nn.functional.layer_norm(motion[:3].mean(0), (F,))
    assert torch.allclose(level[2, :3], expected.expand(3, F), atol=1e-5)
    assert (out[2, 3:] == 0).all()


def _check_batch_invariance(model: torch.nn.Module, fill: float) -> None:
    """A series' logits are the same alone, beside longer series, and beside shorter ones."""
    torch.manual_seed(0)
    model.eval()
    short, longer, shorter = (
        torch.randn(5, F),
        [torch.randn(9, F), torch.randn(12, F)],
        [torch.randn(2, F)],
    )
    alone = model(*_padded([short], fill))  # (1, C)
    batched = model(*_padded([longer[0], short, *shorter, longer[1]], fill))  # (4, C)
    with_shorter = model(*_padded([*shorter, short], fill))  # (2, C)
    assert batched.shape == (4, C)
    assert torch.allclose(alone[0], batched[1], atol=1e-5)
    assert torch.allclose(alone[0], with_shorter[1], atol=1e-5)
    assert torch.isfinite(batched).all()


def test_attention_pooling_weighs_valid_steps_only() -> None:
    """With a constant score every valid step weighs 1/T: the pooled vector is the mean over the
    valid outputs."""
    torch.manual_seed(0)
    model = LSTMClassifier(F, C, hidden_size=8, input_proj=None, pooling="attention").eval()
    assert model.attention is not None
    torch.nn.init.zeros_(model.attention.weight)
    frames = torch.randn(4, F)
    outputs, _ = model.rnn(model.proj(model.norm(frames))[None])  # (1, 4, H): no padding at all
    expected = model.head(outputs[0].mean(dim=0))  # (C,)
    x, lengths = _padded(
        [frames, torch.randn(11, F)], fill=0.0
    )  # 7 padded steps that would dilute the mean
    assert torch.allclose(model(x, lengths)[0], expected, atol=1e-5)


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


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("lstm", {}),
        ("mean", {}),
        ("lstm", {"input_norm": "series"}),
        ("lstm", {"input_norm": "split"}),
        ("lstm", {"cell": "gru", "pooling": "attention", "input_proj": None}),
    ],
)
def test_spec_and_state_dict_rebuild_the_same_model(kind: str, options: dict, tmp_path) -> None:
    spec = ModelSpec(
        kind=kind,
        input_dim=F,
        num_classes=C,
        hidden_size=12,
        num_layers=2,
        bidirectional=True,
        **options,
    )
    torch.manual_seed(1)
    model = spec.build().eval()
    for norm in model.modules():
        if isinstance(norm, SeriesCentring):
            norm.scale.fill_(3.0)  # fitted: the buffer must travel in the state_dict
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    (tmp_path / "spec.json").write_text(json.dumps(spec.to_dict()))

    loaded_spec = ModelSpec.from_dict(json.loads((tmp_path / "spec.json").read_text()))
    torch.manual_seed(2)  # different init: the weights must come from the file
    rebuilt = loaded_spec.build().eval()
    rebuilt.load_state_dict(torch.load(tmp_path / "weights.pt", weights_only=True))

    x, lengths = torch.randn(3, 7, F), torch.tensor([7, 4, 1])
    assert loaded_spec == spec
    assert torch.allclose(model(x, lengths), rebuilt(x, lengths), atol=1e-6)


def test_gru_and_bidirectional_attention_build_what_they_say() -> None:
    model = ModelSpec(
        "lstm", F, C, hidden_size=8, cell="gru", bidirectional=True, pooling="attention"
    ).build()
    assert isinstance(model, LSTMClassifier) and model.attention is not None
    assert isinstance(model.rnn, torch.nn.GRU) and model.rnn.bidirectional
    assert model.attention.in_features == model.head.in_features == 16
    assert model(torch.randn(2, 5, F), torch.tensor([5, 2])).shape == (2, C)
    plain = ModelSpec("lstm", F, C, hidden_size=8, input_proj=None).build()
    assert isinstance(plain, LSTMClassifier) and isinstance(plain.proj, torch.nn.Identity)
    assert plain.rnn.input_size == F


def test_every_field_round_trips_through_json() -> None:
    spec = ModelSpec(
        "lstm", F, C, cell="gru", input_proj=None, pooling="attention", input_norm="series"
    )
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


def test_spec_errors_name_the_bad_value() -> None:
    with pytest.raises(ValueError, match="'gru'"):
        ModelSpec(kind="gru", input_dim=F, num_classes=C)
    with pytest.raises(ValueError, match="hidden"):
        ModelSpec.from_dict({"kind": "lstm", "input_dim": F, "num_classes": C, "hidden": 3})
    with pytest.raises(ValueError, match="num_classes"):
        ModelSpec(kind="lstm", input_dim=F, num_classes=1)
    with pytest.raises(ValueError, match="'rnn'"):
        ModelSpec(kind="lstm", input_dim=F, num_classes=C, cell="rnn")
    with pytest.raises(ValueError, match="'max'"):
        ModelSpec(kind="lstm", input_dim=F, num_classes=C, pooling="max")
    with pytest.raises(ValueError, match="'batch'"):
        ModelSpec(kind="lstm", input_dim=F, num_classes=C, input_norm="batch")


@pytest.mark.parametrize("options", RECURRENT, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_per_step_outputs_cover_the_valid_steps_and_ignore_padding(options: dict) -> None:
    torch.manual_seed(0)
    model = ModelSpec("lstm", F, C, hidden_size=8, **options).build().eval()
    short, longer = torch.randn(4, F), torch.randn(7, F)
    alone_logits, alone_states = model.per_step(*_padded([short], float("nan")))
    logits, states = model.per_step(*_padded([longer, short], float("nan")))
    width = 8 * (2 if options["bidirectional"] else 1)
    assert logits.shape == (2, 7, C) and states.shape == (2, 7, width)
    assert torch.allclose(alone_logits[0], logits[1, :4], atol=1e-5)
    assert torch.allclose(alone_states[0], states[1, :4], atol=1e-5)
    if options["pooling"] == "last" and not options["bidirectional"]:
        # the last valid step's scores are the series' own: the prediction had it ended there
        assert torch.allclose(logits[1, 3], model(*_padded([short], 0.0))[0], atol=1e-5)


def test_mean_pool_per_step_scores_each_frame_alone_and_has_no_state() -> None:
    torch.manual_seed(0)
    model = MeanPoolClassifier(F, C).eval()
    frames = torch.randn(5, F)
    logits, states = model.per_step(*_padded([frames], 0.0))
    assert states.shape == (1, 5, 0)
    assert torch.allclose(logits[0, 2], model(*_padded([frames[2:3]], 0.0))[0], atol=1e-5)
