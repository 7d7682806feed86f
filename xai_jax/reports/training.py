"""Figures of a training run: loss and accuracy against the step.

The history is the list of records written by `xai_jax.train` (`workdir/history.json`): each a
dict with "step" and some of "loss", "train_accuracy" (averaged every few steps, Tjoa & Guan's
4-iteration loss plot) and "eval_accuracy", "best_accuracy" (regular-evaluation mode).
"""

from __future__ import annotations

import os
import pathlib
from typing import Any, Mapping, Sequence

import numpy as np
# A bare Figure (no pyplot): no global backend or figure state, works without a display.
from matplotlib.figure import Figure


def _series(history: Sequence[Mapping[str, Any]], field: str) -> tuple[np.ndarray, np.ndarray]:
  points = [(r["step"], r[field]) for r in history
            if r.get(field) is not None and np.isfinite(r[field])]
  if not points:
    return np.zeros(0), np.zeros(0)
  steps, values = zip(*points)
  return np.asarray(steps, np.int64), np.asarray(values, np.float64)


def plot_history(history: Sequence[Mapping[str, Any]], path: str | os.PathLike, *,
                 title: str | None = None, stop_reason: str | None = None) -> pathlib.Path:
  """Writes a two-panel PNG: loss (left) and accuracy (right) against the training step.

  Args:
    history: records with "step" and any of "loss", "train_accuracy", "eval_accuracy",
      "best_accuracy" (missing or NaN values are skipped).
    path: output file (its directory is created); the format follows the suffix (PNG, PDF, SVG).
    title: figure title.
    stop_reason: if given, marks the last step with a vertical line labelled with it.

  Returns:
    The path written.

  Raises:
    ValueError: empty history or records without "step".
  """
  if not history:
    raise ValueError("plot_history got an empty history")
  if any("step" not in r for r in history):
    raise ValueError("every history record needs a 'step'")
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fig = Figure(figsize=(10, 3.6), layout="constrained")
  ax_loss, ax_acc = fig.subplots(1, 2)
  steps, loss = _series(history, "loss")
  ax_loss.plot(steps, loss, color="tab:blue", lw=1.2, label="training loss")
  ax_loss.set_xlabel("step")
  ax_loss.set_ylabel("cross-entropy")
  if len(loss) and loss.min() > 0 and loss.max() / loss.min() > 30:
    ax_loss.set_yscale("log")
  for field, style in (("train_accuracy", dict(color="tab:blue", lw=1.0, alpha=0.7)),
                       ("eval_accuracy", dict(color="tab:orange", lw=0, marker=".", ms=4)),
                       ("best_accuracy", dict(color="tab:green", lw=1.2, drawstyle="steps-post"))):
    s, v = _series(history, field)
    if len(v):
      ax_acc.plot(s, v, label=field.replace("_", " "), **style)
  ax_acc.set_xlabel("step")
  ax_acc.set_ylabel("accuracy")
  ax_acc.set_ylim(-0.02, 1.02)
  if stop_reason is not None:
    last = max(r["step"] for r in history)
    for ax in (ax_loss, ax_acc):
      ax.axvline(last, color="grey", ls="--", lw=0.8, label=f"stop: {stop_reason}")
  ax_loss.legend(loc="upper right")
  if ax_acc.lines:
    ax_acc.legend(loc="lower right")
  if title:
    fig.suptitle(title)
  fig.savefig(path, dpi=110)
  return path
