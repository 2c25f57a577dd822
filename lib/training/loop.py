"""The training loop and batch prediction for the networks in lib/training/model.py.

Values in, values out: `fit` returns the model and a per-epoch history; logging them
(MLflow) is the caller's job, per epoch through `on_epoch`. CPU first; pass
`device="cuda"` to train on a GPU, where bf16 autocast is used (never on the CPU,
whose results must be bit-for-bit reproducible from the seed).

Randomness comes from three seeded streams, so turning one feature on does not
reshuffle the others: initialisation (torch's global seed), batch order and balanced
sampling (one generator), augmentation (its own generator). Augmentation touches
training batches only; validation, evaluation and prediction see whole series.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pad_sequence

from lstmpipe.lib.config import TrainConfig
from lstmpipe.lib.training.metrics import classification_metrics, confusion_matrix
from lstmpipe.lib.training.model import (
    LevelAndChange,
    LSTMClassifier,
    MeanPoolClassifier,
    ModelSpec,
    SeriesCentring,
)

BUCKET_BATCHES = 8  # batches per length bucket: less padding, still shuffled across epochs


@dataclass
class SequenceSet:
    """Labelled feature sequences: features[i] is (T_i, F) float32, labels[i] its class index."""

    features: list[np.ndarray]
    labels: np.ndarray  # (N,) int64
    series_ids: list[str]

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        if not len(self.features) == len(self.labels) == len(self.series_ids):
            raise ValueError(
                f"SequenceSet: {len(self.features)} feature sequences, {len(self.labels)} labels "
                f"and {len(self.series_ids)} series ids; they must match one to one"
            )
        empty = [sid for sid, f in zip(self.series_ids, self.features, strict=False) if len(f) == 0]
        if empty:
            raise ValueError(
                f"SequenceSet: series {empty[:5]} have no frames; drop them before training"
            )

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, series_ids: Sequence[str]) -> SequenceSet:
        """The subset with these ids, in the order given (e.g. one split of stratified_split)."""
        index = {sid: i for i, sid in enumerate(self.series_ids)}
        missing = [sid for sid in series_ids if sid not in index]
        if missing:
            raise KeyError(f"SequenceSet.select: series {missing[:5]} are not in this set")
        rows = [index[sid] for sid in series_ids]
        return SequenceSet([self.features[i] for i in rows], self.labels[rows], list(series_ids))


@dataclass
class FitResult:
    model: nn.Module  # best validation state restored, in eval mode
    # per epoch: epoch, train_loss, val_loss, val_accuracy, val_macro_f1, lr (at its end)
    history: list[dict[str, float]]
    best_epoch: int  # 1-based, as in history
    stopped_early: bool


def model_spec(
    config: TrainConfig, input_dim: int, num_classes: int, kind: str = "lstm"
) -> ModelSpec:
    """The ModelSpec a TrainConfig describes, for data of this width and number of classes."""
    return ModelSpec(
        kind=kind,
        input_dim=input_dim,
        num_classes=num_classes,
        hidden_size=config.hidden_size,
        num_layers=config.num_layers,
        bidirectional=config.bidirectional,
        dropout=config.dropout,
        cell=config.cell,
        input_proj=config.input_proj,
        pooling=config.pooling,
        input_norm=config.input_norm,
    )


def collate(
    items: Sequence[tuple[np.ndarray | torch.Tensor, int]],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(features (T_i, F), label) pairs -> x (B, T, F)
    float32 zero-padded, lengths (B,) int64, y (B,) int64."""
    frames = [torch.as_tensor(f, dtype=torch.float32) for f, _ in items]
    x = pad_sequence(frames, batch_first=True)  # (B, T, F)
    lengths = torch.tensor([len(f) for f in frames], dtype=torch.int64)  # (B,)
    y = torch.tensor([int(label) for _, label in items], dtype=torch.int64)  # (B,)
    return x, lengths, y


def fit(
    spec: ModelSpec,
    train: SequenceSet,
    val: SequenceSet,
    config: TrainConfig,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
    device: str = "cpu",
) -> FitResult:
    """Train with AdamW + OneCycle, class balancing and early stopping on validation macro-F1.

    The best state is the last epoch with the highest val macro-F1 (see the loop for why
    ties go to the later epoch). Same seed, same data, same device -> the same history.
    """
    if len(train) == 0 or len(val) == 0:
        raise ValueError(
            f"fit: {len(train)} training and {len(val)} validation series; both must be non-empty "
            "(early stopping needs a validation set: add series or raise train.val_fraction)"
        )
    torch.manual_seed(config.seed)
    model = spec.build()
    norm = getattr(model, "norm", None)
    if isinstance(norm, SeriesCentring | LevelAndChange):
        norm.fit(train.features)
    model = model.to(device)
    optimizer = _adamw(model, config)
    steps_per_epoch = -(-len(train) // config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.1
    )
    # Balanced sampling already shows each class equally often: weighting the loss too counts twice.
    weights = (
        _class_weights(train.labels, spec.num_classes) if config.balance == "weights" else None
    )
    criterion = nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device))
    generator = torch.Generator().manual_seed(config.seed)
    augment_generator = torch.Generator().manual_seed(_substream(config.seed, 1))
    train_items, val_items = _items(train), _items(val)
    class_names = [str(c) for c in range(spec.num_classes)]

    history: list[dict[str, float]] = []
    # Best = highest val macro-F1; on a tie the later epoch wins (its state is kept, though the tie
    # does not reset patience): small validation sets tie often, and the later model has fit the
    # training data longer, while validation loss over a handful of series grows with confidence on
    # one mistake, not with error.
    best = -1.0
    best_state, best_epoch, stale = copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, config.epochs + 1):
        order = (
            _balanced_draw(train.labels, spec.num_classes, generator)
            if config.balance == "sampler"
            else None
        )
        batches = _bucketed_batches(
            [len(f) for f, _ in train_items], config.batch_size, generator, order
        )
        train_loss = _train_epoch(
            model,
            train_items,
            batches,
            criterion,
            optimizer,
            scheduler,
            device,
            lambda f: augment(f, config, augment_generator),
            config.grad_clip,
        )
        val_loss, val_pred = _validate(model, val_items, criterion, config.batch_size, device)
        scores = classification_metrics(val.labels, val_pred, class_names)
        row = {
            "epoch": epoch,
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_accuracy": scores["accuracy"],
            "val_macro_f1": scores["macro_f1"],
            "lr": scheduler.get_last_lr()[0],
        }
        history.append(row)
        if on_epoch is not None:
            on_epoch(dict(row))  # a copy: the caller may add keys before logging
        score = row["val_macro_f1"]
        if score >= best:
            best_state, best_epoch = copy.deepcopy(model.state_dict()), epoch
        stale = 0 if score > best else stale + 1
        best = max(best, score)
        if stale >= config.patience:
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        stopped_early=len(history) < config.epochs,
    )


def predict_proba(model: nn.Module, features: list[np.ndarray], batch_size: int = 64) -> np.ndarray:
    """Class probabilities (N, C) float32 on the model's device, rows in the order of `features`."""
    probs = np.zeros((len(features), _classifier(model).num_classes), dtype=np.float32)
    for rows, _, logits in _inference_batches(model, features, batch_size, model):
        probs[rows] = torch.softmax(logits.float(), dim=-1).cpu().numpy()
    return probs


def predict_steps(
    model: nn.Module, features: list[np.ndarray], batch_size: int = 64
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per series, (T_i, C) class probabilities per frame and (T_i, S) per-timestep states (S = 0
    for models without a hidden state), in the order of `features`. See the models' per_step."""
    found: list[tuple[np.ndarray, np.ndarray]] = [(np.zeros(0), np.zeros(0))] * len(features)
    per_step = _classifier(model).per_step
    batches = _inference_batches(model, features, batch_size, per_step)
    for rows, lengths, (logits, states) in batches:
        probs = torch.softmax(logits.float(), dim=-1).cpu().numpy()  # (B, T, C)
        states = states.float().cpu().numpy()  # (B, T, S)
        for b, i in enumerate(rows):
            found[i] = (probs[b, : lengths[b]], states[b, : lengths[b]])
    return found


def _classifier(model: nn.Module) -> LSTMClassifier | MeanPoolClassifier:
    """`model` as one of the classifiers ModelSpec builds (what has num_classes and per_step)."""
    if not isinstance(model, LSTMClassifier | MeanPoolClassifier):
        raise TypeError(f"expected a classifier built by ModelSpec, got {type(model).__name__}")
    return model


def _inference_batches(
    model: nn.Module,
    features: list[np.ndarray],
    batch_size: int,
    forward: Callable[[torch.Tensor, torch.Tensor], Any],
) -> Iterator[tuple[np.ndarray, torch.Tensor, Any]]:
    """(rows, lengths, forward(x, lengths)) per batch, in eval and inference mode, under autocast.

    Length-sorted batches waste the least padding; padding never changes a row's outputs.
    """
    device = next(model.parameters()).device
    model.eval()
    order = np.argsort([len(f) for f in features], kind="stable")
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        x, lengths, _ = collate([(features[i], 0) for i in rows])
        with torch.inference_mode(), _autocast(device):
            out = forward(x.to(device), lengths)
        yield rows, lengths, out


def evaluate(model: nn.Module, data: SequenceSet, class_names: list[str]) -> dict[str, Any]:
    """classification_metrics on `data`, and `confusion` (rows true, columns predicted) as lists."""
    probs = predict_proba(model, data.features)
    y_pred = probs.argmax(axis=1)
    # top-k above 5 classes
    metrics = classification_metrics(data.labels, y_pred, class_names, probabilities=probs)
    metrics["confusion"] = confusion_matrix(data.labels, y_pred, len(class_names)).tolist()
    return metrics


def augment(frames: torch.Tensor, config: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    """A random temporal crop, then frame dropout, of one series (T, F) -> (T', F), 1 <= T' <= T.

    Training batches only: fit never calls this on validation data, predict_proba never.
    With crop_fraction 1.0 and frame_dropout 0.0 the input comes back untouched (no draw is made).
    """
    length = len(frames)
    if config.crop_fraction < 1.0:
        keep = max(1, round(config.crop_fraction * length))
        start = int(torch.randint(length - keep + 1, (1,), generator=generator))
        frames, length = frames[start : start + keep], keep
    if config.frame_dropout > 0.0:
        kept = torch.rand(length, generator=generator) >= config.frame_dropout  # (T,)
        if not kept.any():
            # a series keeps at least one frame
            kept[int(torch.randint(length, (1,), generator=generator))] = True
        frames = frames[kept]
    return frames


def _substream(seed: int, stream: int) -> int:
    """An independent seed for one purpose, derived from the run's seed."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _balanced_draw(labels: np.ndarray, num_classes: int, generator: torch.Generator) -> list[int]:
    """len(labels) indices drawn with replacement, every
    class equally likely: an epoch of a balanced sampler."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    weights = torch.tensor(1.0 / counts[labels], dtype=torch.float64)  # (N,): each class sums to 1
    return torch.multinomial(weights, len(labels), replacement=True, generator=generator).tolist()


def _adamw(model: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """Weight decay on matrices only: decaying LayerNorm gains and biases hurts (as in nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def _class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequency, scaled so a balanced set gets weight 1 everywhere; (C,) float32."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    # max(count, 1): a class absent from train is never a target, so its weight does not matter.
    weights = len(labels) / (num_classes * np.maximum(counts, 1.0))
    return torch.tensor(weights, dtype=torch.float32)


def _items(data: SequenceSet) -> list[tuple[torch.Tensor, int]]:
    """Convert to tensors once, not every epoch."""
    return [
        (torch.as_tensor(f, dtype=torch.float32), int(y))
        for f, y in zip(data.features, data.labels, strict=False)
    ]


def _bucketed_batches(
    lengths: list[int], batch_size: int, generator: torch.Generator, order: list[int] | None = None
) -> list[list[int]]:
    """Shuffle, sort by length within buckets of BUCKET_BATCHES batches, cut, shuffle the batches.

    `order`: the indices to batch (a balanced draw, with repeats); None = each index once.
    """
    if order is None:
        order = torch.randperm(len(lengths), generator=generator).tolist()
    bucket = batch_size * BUCKET_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), bucket):
        # stable: ties stay shuffled
        chunk = sorted(order[start : start + bucket], key=lambda i: lengths[i])
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _train_epoch(
    model: nn.Module,
    items: list[tuple[torch.Tensor, int]],
    batches: list[list[int]],
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: str,
    transform: Callable[[torch.Tensor], torch.Tensor],
    grad_clip: float,
) -> float:
    """One pass over the batches (each series through `transform`); the mean loss per series."""
    model.train()
    total, seen = 0.0, 0
    for rows in batches:
        x, lengths, y = collate([(transform(items[i][0]), items[i][1]) for i in rows])
        with _autocast(device):
            logits = model(x.to(device), lengths)  # (B, C)
        loss = criterion(logits.float(), y.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        total, seen = total + loss.item() * len(rows), seen + len(rows)
    return total / seen


def _validate(
    model: nn.Module,
    items: list[tuple[torch.Tensor, int]],
    criterion: nn.Module,
    batch_size: int,
    device: str,
) -> tuple[float, np.ndarray]:
    """Mean validation loss per series and the predicted classes (N,), in input order."""
    model.eval()
    total, preds = 0.0, []
    with torch.inference_mode():
        for start in range(0, len(items), batch_size):
            x, lengths, y = collate(items[start : start + batch_size])
            with _autocast(device):
                logits = model(x.to(device), lengths)  # (B, C)
            total += criterion(logits.float(), y.to(device)).item() * len(y)
            preds.append(logits.argmax(dim=-1).cpu().numpy())
    return total / len(items), np.concatenate(preds)


def _autocast(device: str | torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (no GradScaler needed, unlike fp16); nothing elsewhere."""
    if torch.device(device).type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
