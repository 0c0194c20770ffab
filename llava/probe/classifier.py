"""The probe's classifier: an independent MLP (default 5 hidden ReLU layers) trained with Adam and early
stopping on a validation split, evaluated with stratified k-fold cross-validation (macro-F1, accuracy,
and a majority-class baseline on the same folds)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ProbeSettings:
    """MLP and training settings (the paper's probe: 5 hidden ReLU layers, Adam, early stopping)."""

    hidden_layers: int = 5
    hidden_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    max_epochs: int = 200
    patience: int = 15
    batch_size: int = 32
    val_fraction: float = 0.2
    folds: int = 5
    seed: int = 0


def build_mlp(in_dim: int, n_classes: int, hidden_layers: int, hidden_size: int) -> nn.Sequential:
    """Linear+ReLU x ``hidden_layers``, then a linear classifier head."""
    if hidden_layers < 0 or hidden_size < 1:
        raise ValueError(f"--hidden-layers must be >= 0 and --hidden-size >= 1 (got {hidden_layers}, {hidden_size})")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(hidden_layers):
        layers += [nn.Linear(width, hidden_size), nn.ReLU()]
        width = hidden_size
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def stratified_folds(labels: list[int], k: int, seed: int = 0) -> list[list[int]]:
    """``k`` disjoint index lists covering every sample, each class spread round-robin over the folds."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    smallest = min(len(v) for v in by_class.values())
    if k < 2 or smallest < k:
        raise ValueError(f"--folds {k}: need k >= 2 and at least k images per class (smallest class has {smallest})")
    rng = random.Random(seed)
    folds: list[list[int]] = [[] for _ in range(k)]
    offset = 0
    for cls in sorted(by_class):
        idx = by_class[cls][:]
        rng.shuffle(idx)
        for j, i in enumerate(idx):
            folds[(j + offset) % k].append(i)
        offset += len(idx)
    return [sorted(f) for f in folds]


def macro_f1(y_true: torch.Tensor, y_pred: torch.Tensor, n_classes: int) -> float:
    """Unweighted mean of per-class F1 over the classes present in ``y_true`` or ``y_pred``."""
    f1s = []
    for c in range(n_classes):
        tp = int(((y_pred == c) & (y_true == c)).sum())
        fp = int(((y_pred == c) & (y_true != c)).sum())
        fn = int(((y_pred != c) & (y_true == c)).sum())
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    return sum(f1s) / len(f1s) if f1s else 0.0


def _split_val(y: torch.Tensor, fraction: float, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train, val) index tensors; every class keeps at least one training sample."""
    train, val = [], []
    for c in torch.unique(y).tolist():
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        n_val = min(len(idx) - 1, max(1, round(fraction * len(idx)))) if len(idx) > 1 else 0
        val.append(idx[:n_val])
        train.append(idx[n_val:])
    return torch.cat(train), torch.cat(val)


def train_mlp(x: torch.Tensor, y: torch.Tensor, n_classes: int, s: ProbeSettings, seed: int) -> nn.Module:
    """Train on (x, y) with early stopping on a stratified validation split; returns the best-val-loss model."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tr, va = _split_val(y, s.val_fraction, gen)
    model = build_mlp(x.shape[1], n_classes, s.hidden_layers, s.hidden_size)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    best, best_state, bad = float("inf"), None, 0
    for _ in range(s.max_epochs):
        model.train()
        order = tr[torch.randperm(len(tr), generator=gen)]
        for b in range(0, len(order), s.batch_size):
            idx = order[b:b + s.batch_size]
            opt.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
        if len(va) == 0:
            continue
        model.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(model(x[va]), y[va]))
        if val_loss < best - 1e-6:
            best, bad = val_loss, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= s.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()


def cross_validate(x: torch.Tensor, y: torch.Tensor, n_classes: int, s: ProbeSettings) -> dict[str, list[float]]:
    """Per-fold ``f1``/``accuracy`` of the MLP and ``majority_f1``/``majority_accuracy`` of the majority class
    (both fit on the training folds only; features standardized with training-fold statistics)."""
    x = x.float()
    y = y.long()
    out: dict[str, list[float]] = {"f1": [], "accuracy": [], "majority_f1": [], "majority_accuracy": []}
    folds = stratified_folds(y.tolist(), s.folds, s.seed)
    for i, test in enumerate(folds):
        test_idx = torch.tensor(test)
        mask = torch.ones(len(y), dtype=torch.bool)
        mask[test_idx] = False
        train_idx = torch.nonzero(mask).flatten()
        mean = x[train_idx].mean(0, keepdim=True)
        std = x[train_idx].std(0, keepdim=True).clamp_min(1e-6)
        xs = (x - mean) / std
        model = train_mlp(xs[train_idx], y[train_idx], n_classes, s, s.seed + i)
        with torch.no_grad():
            pred = model(xs[test_idx]).argmax(-1)
        y_test = y[test_idx]
        out["f1"].append(macro_f1(y_test, pred, n_classes))
        out["accuracy"].append(float((pred == y_test).float().mean()))
        majority = int(torch.bincount(y[train_idx], minlength=n_classes).argmax())
        base = torch.full_like(y_test, majority)
        out["majority_f1"].append(macro_f1(y_test, base, n_classes))
        out["majority_accuracy"].append(float((base == y_test).float().mean()))
    return out
