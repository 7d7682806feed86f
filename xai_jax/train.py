"""Training classifiers for xai_jax: optax Adam, jitted steps, the two modes of Tjoa & Guan.

What is here:
  * `make_optimizer`: Adam with coupled L2 weight decay (as `torch.optim.Adam(weight_decay=...)`,
    the paper's choice) or decoupled weight decay (AdamW), and the paper's hyperparameters
    (`PAPER_LEARNING_RATES`, `paper_settings`).
  * `TrainState`, `init_train_state`, `train_step`, `eval_step`, `evaluate`: parameters, batch-norm
    statistics, optimiser state, step and dropout key travel as arguments through jitted steps;
    the model and the optimiser are static (one compilation per model/optimiser/shape).
  * `train_continuous` (phase 1) and `train_regular_evaluation` (phase 2) of Tjoa & Guan,
    `branch` / `train_branches` (several phase-2 models from one phase-1 model).
  * Orbax checkpoints in a workdir: saved every `checkpoint_every` steps and when a run stops; a
    rerun with the same arguments resumes from the latest checkpoint and reaches the state an
    uninterrupted run reaches (same parameters, optimiser state, step, key and history, bit for
    bit on one machine), or returns at once if the run had finished.

Data: a *shard* is a mapping with `"image": float32[n, H, W, C]` (raw [0, 1] pixels, no
normalisation) and `"label": int[n]` (other keys, e.g. "heatmap", are ignored), or a sequence of
such per-sample mappings. A run takes `shards` as a sequence of shards or as a callable
`get_shard(i) -> shard` together with `num_shards`, so the cells generator, a TFDS builder or
arrays in memory can all feed it; only one shard is held at a time.

The workdir holds `checkpoints/<step>/` (orbax), `history.json` and `history.csv`; plot the
history with `xai_jax.reports.training.plot_history`. Every finished checkpoint step gets a
record of the checksums of its files (`checkpoints/.<step>.sha256`, `xai_jax.files`), because
orbax restores garbled array bytes without complaint. Resuming uses the newest step that
verifies: a damaged or deleted newer step is reported (`files.DamagedFileWarning`), deleted
and recomputed from the older one (bit for bit, as any resume); a step without a record
(written before records existed, or killed between orbax's commit and the record) is used if
orbax restores it, with a warning. With no usable step the run is refused
(`files.DamagedFileError`: delete the checkpoints and rerun), never taken as finished.
`history.json` is verified too, and `load_history` rebuilds a damaged one from the checkpoint.

Example (the paper's two phases for VGG16 on 32 training and 8 validation shards):

    settings = train.paper_settings("vgg16")
    tx = train.make_optimizer(learning_rate=settings["learning_rate"])
    state = train.TrainState.create(ported_variables, tx=tx, key=jax.random.key(0))
    base = train.train_continuous(model, state, get_train_shard, num_shards=32, tx=tx,
                                  epochs=settings["epochs_continuous"],
                                  batch_size=settings["batch_size"], key=jax.random.key(1),
                                  workdir=f"{workdir}/continuous", checkpoint_every=500)
    branches = train.train_branches(
        model, base.state, get_train_shard, get_validation_shard, num_shards=32,
        num_validation_shards=8, tx=tx, key=jax.random.key(2), workdir=f"{workdir}/branches",
        epochs=settings["epochs_regular"], batch_size=settings["batch_size"],
        patience=settings["patience"], refresh_fraction=settings["refresh_fraction"])
    to_explain = branches[0].best

References:
  E. Tjoa and C. Guan, "Quantifying Explainability of Saliency Methods in Deep Neural Networks",
  section III and table I (training modes, n_l, r_f, target accuracy 0.96).
  D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization", 2015.
  I. Loshchilov and F. Hutter, "Decoupled Weight Decay Regularization", 2019 (AdamW).
"""

from __future__ import annotations

import collections.abc
import csv
import dataclasses
import functools
import io
import json
import math
import os
import pathlib
import warnings
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from xai_jax import files
from xai_jax import xla

# Table I and section III of Tjoa & Guan, and the seed code (spec cells.md section 3).
PAPER_WEIGHT_DECAY = 1e-5
PAPER_LEARNING_RATES = {"resnet": 1e-3, "alexnet": 1e-4, "vgg": 1e-4}
PAPER_BATCH_SIZES = {"resnet": 4, "alexnet": 16, "vgg": 16}
# n_l (early stopping limit) and r_f (refresh fraction) per model family.
PAPER_PATIENCE = {"resnet": 24, "alexnet": 48, "vgg": 48}
PAPER_REFRESH_FRACTION = {"resnet": 0.4, "alexnet": 0.3, "vgg": 0.3}
PAPER_EPOCHS = {"resnet": {"continuous": 2, "regular": 4},
                "alexnet": {"continuous": 16, "regular": 16},
                "vgg": {"continuous": 4, "regular": 4}}
PAPER_TARGET_ACCURACY = 0.96
PAPER_EVAL_EVERY = 4
PAPER_NUM_BRANCHES = 5
FAMILIES = tuple(PAPER_LEARNING_RATES)

STOP_EPOCHS = "epochs"        # all epochs done without S1 or S2
STOP_TARGET = "target"        # S1: single-shard accuracy reached the target
STOP_PATIENCE = "patience"    # S2: early-stopping counter reached n_l
STOP_MAX_STEPS = "max_steps"  # interrupted on purpose; a rerun resumes
FINISHED = (STOP_EPOCHS, STOP_TARGET, STOP_PATIENCE)

_HISTORY_FIELDS = ("step", "epoch", "loss", "train_accuracy", "eval_accuracy", "eval_shard",
                   "patience_counter", "best_accuracy")


# --------------------------------------------------------------------------------------------
# Optimiser and paper settings


def _model_family(name: str) -> str:
  """Maps a model name (`"resnet34"`, `"vgg16_bn"`, `"alexnet"`, ...) to its paper family.

  Raises:
    ValueError: if the name belongs to none of `FAMILIES`.
  """
  for family in FAMILIES:
    if name.lower().startswith(family):
      return family
  raise ValueError(f"no paper training settings for model {name!r}: Tjoa & Guan trained the "
                   f"families {list(FAMILIES)} (names starting with one of them)")


def paper_settings(name: str) -> dict[str, Any]:
  """The training hyperparameters Tjoa & Guan used for a model (table I, seed code).

  Args:
    name: model name or family, e.g. "resnet34", "alexnet", "vgg16".

  Returns:
    A dict with `learning_rate`, `weight_decay`, `batch_size`, `patience` (n_l),
    `refresh_fraction` (r_f), `target_accuracy`, `eval_every`, `epochs_continuous`,
    `epochs_regular` and `num_branches`.

  Raises:
    ValueError: unknown family.
  """
  family = _model_family(name)
  return dict(learning_rate=PAPER_LEARNING_RATES[family], weight_decay=PAPER_WEIGHT_DECAY,
              batch_size=PAPER_BATCH_SIZES[family], patience=PAPER_PATIENCE[family],
              refresh_fraction=PAPER_REFRESH_FRACTION[family],
              target_accuracy=PAPER_TARGET_ACCURACY, eval_every=PAPER_EVAL_EVERY,
              epochs_continuous=PAPER_EPOCHS[family]["continuous"],
              epochs_regular=PAPER_EPOCHS[family]["regular"], num_branches=PAPER_NUM_BRANCHES)


@functools.lru_cache(maxsize=None)
def make_optimizer(*, learning_rate: float | optax.Schedule,
                   weight_decay: float = PAPER_WEIGHT_DECAY, decoupled: bool = False,
                   b1: float = 0.9, b2: float = 0.999,
                   eps: float = 1e-8) -> optax.GradientTransformation:
  """Adam with L2 (coupled) or decoupled weight decay.

  Coupled (default, the paper's `torch.optim.Adam(lr, weight_decay=1e-5)`): the gradient becomes
  `g + weight_decay * p` before Adam's moment estimates, so the decay is rescaled by Adam.
  Decoupled (`torch.optim.AdamW`, optax.adamw): `p <- p - lr * (adam_direction + weight_decay * p)`.
  Both decay every parameter (biases and batch-norm scales too), as torch does by default.

  The result is cached on its arguments, so equal settings return the same object and jitted
  steps that take the optimiser as a static argument compile once.

  Args:
    learning_rate: step size, or an optax schedule. Paper: `PAPER_LEARNING_RATES`
      (1e-3 ResNet, 1e-4 AlexNet/VGG).
    weight_decay: decay coefficient (paper 1e-5); 0 gives plain Adam.
    decoupled: False for L2 added to the gradient, True for AdamW.
    b1, b2, eps: Adam's constants (torch defaults); eps is added to sqrt(v_hat) as in torch.

  Returns:
    An `optax.GradientTransformation`.

  Raises:
    ValueError: negative learning rate or weight decay.
  """
  if not callable(learning_rate) and not learning_rate > 0:
    raise ValueError(f"learning_rate must be positive, got {learning_rate}")
  if not weight_decay >= 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
  if decoupled:
    return optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  return optax.chain(optax.add_decayed_weights(weight_decay),
                     optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
                     optax.scale_by_learning_rate(learning_rate))


# --------------------------------------------------------------------------------------------
# State and steps


def _raw_key(key: jax.Array) -> jax.Array:
  """A PRNG key as raw `uint32[2]` data (new-style typed keys are unwrapped), so orbax saves it."""
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  if key.dtype != jnp.uint32 or key.ndim != 1:
    raise ValueError(f"key must be a jax PRNG key (jax.random.key or PRNGKey), got dtype "
                     f"{key.dtype} shape {key.shape}")
  return key


@flax.struct.dataclass
class TrainState:
  """Everything a training step changes, as one pytree.

  Attributes:
    params: the model's "params" collection.
    batch_stats: the "batch_stats" collection (running means/variances); `{}` without batch norm.
    opt_state: optax state of the optimiser the state was made for.
    step: int32[], number of optimiser steps taken (carried on across branches).
    rng: uint32[2], base key; step `s` draws dropout from `fold_in(rng, s)`.
  """
  params: Any
  batch_stats: Any
  opt_state: Any
  step: jax.Array
  rng: jax.Array

  @property
  def variables(self) -> dict[str, Any]:
    """The Flax variables `{"params", "batch_stats"}` for `model.apply`."""
    if self.batch_stats:
      return {"params": self.params, "batch_stats": self.batch_stats}
    return {"params": self.params}

  @classmethod
  def create(cls, variables: Mapping[str, Any], *, tx: optax.GradientTransformation,
             key: jax.Array, step: int = 0) -> "TrainState":
    """A fresh state (new optimiser state) from Flax variables, e.g. ported torchvision weights.

    Only "params" and "batch_stats" are kept; explainer-contract collections (activation and bias
    probes) that `model.init` creates are dropped.
    """
    if "params" not in variables:
      raise ValueError(f"variables need a 'params' collection; got {sorted(variables)}")
    params = variables["params"]
    return cls(params=params, batch_stats=variables.get("batch_stats", {}),
               opt_state=tx.init(params), step=jnp.asarray(step, jnp.int32), rng=_raw_key(key))


def init_train_state(model: nn.Module, *, tx: optax.GradientTransformation, key: jax.Array,
                     input_shape: Sequence[int]) -> TrainState:
  """Initialises a model's variables and a `TrainState` for training it from scratch.

  Args:
    model: a Flax module with `__call__(x, *, train=False)`.
    tx: the optimiser (e.g. from `make_optimizer`).
    key: PRNG key; split into the initialisation key and the state's dropout key.
    input_shape: one input's shape `(N, H, W, C)` (N may be 1).

  Returns:
    A `TrainState` at step 0.
  """
  init_key, dropout_key, state_key = jax.random.split(key, 3)
  variables = _init_variables(model, init_key, dropout_key, tuple(int(d) for d in input_shape))
  return TrainState.create(variables, tx=tx, key=state_key)


@functools.partial(xla.jit, static_argnames=("model", "input_shape"))
def _init_variables(model, init_key, dropout_key, input_shape):
  return model.init({"params": init_key, "dropout": dropout_key},
                    jnp.zeros(input_shape, jnp.float32), train=False)


def branch(base: TrainState, *, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
  """A branch of a base model: same parameters, batch statistics and step, fresh optimiser state
  and its own key (Tjoa & Guan phase 2: "each branch starts again from the phase-1 model, with a
  fresh Adam")."""
  return base.replace(opt_state=tx.init(base.params), rng=_raw_key(key))


def _cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


@functools.partial(xla.jit, static_argnames=("model", "tx"))
def _train_step(model, tx, state, images, labels):
  dropout_key = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    variables = {"params": params}
    if state.batch_stats:
      variables["batch_stats"] = state.batch_stats
    logits, updates = model.apply(variables, images, train=True, rngs={"dropout": dropout_key},
                                  mutable=["batch_stats"])
    return _cross_entropy(logits, labels).mean(), (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  param_updates, opt_state = tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(params=optax.apply_updates(state.params, param_updates),
                            batch_stats=updates.get("batch_stats", state.batch_stats),
                            opt_state=opt_state, step=state.step + 1)
  accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
  return new_state, {"loss": loss, "accuracy": accuracy}


def train_step(model: nn.Module, tx: optax.GradientTransformation, state: TrainState,
               batch: Mapping[str, Any]) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimiser step on a batch in training mode (dropout on, batch statistics updated).

  Args:
    model: Flax module, `__call__(x, *, train)`; dropout uses the rng stream "dropout".
    tx: the optimiser whose state `state.opt_state` is.
    state: current `TrainState`.
    batch: `{"image": float32[B, H, W, C], "label": int[B]}`.

  Returns:
    `(new_state, {"loss": float32[], "accuracy": float32[]})`: mean cross-entropy and accuracy of
    this batch's training-mode logits, before the update.
  """
  images, labels = _batch_arrays(batch)
  return _train_step(model, tx, state, images, labels)


def _apply_eval(model, variables, images):
  if isinstance(model, nn.Module):
    return model.apply(variables, images, train=False)
  return model(variables, images)


@functools.partial(xla.jit, static_argnames=("model",))
def _eval_sums(model, variables, images, labels):
  logits = _apply_eval(model, variables, images)
  return {"loss_sum": _cross_entropy(logits, labels).sum(),
          "correct": jnp.sum(jnp.argmax(logits, axis=-1) == labels)}


def eval_step(model: nn.Module | Callable, variables: Mapping[str, Any] | TrainState,
              batch: Mapping[str, Any]) -> dict[str, jax.Array]:
  """Loss and accuracy of a batch in evaluation mode (running batch statistics, no dropout).

  Args:
    model: Flax module (called with `train=False`) or `apply(variables, x) -> logits`.
    variables: Flax variables or a `TrainState`.
    batch: `{"image": float32[B, H, W, C], "label": int[B]}`.

  Returns:
    `{"loss": float32[], "accuracy": float32[]}` (means over the batch).
  """
  if isinstance(variables, TrainState):
    variables = variables.variables
  images, labels = _batch_arrays(batch)
  sums = _eval_sums(model, variables, images, labels)
  return {"loss": sums["loss_sum"] / len(labels), "accuracy": sums["correct"] / len(labels)}


def evaluate(model: nn.Module | Callable, variables: Mapping[str, Any] | TrainState,
             batches: collections.abc.Iterable[Mapping[str, Any]]) -> float:
  """Accuracy over all examples of an iterable of batches (each weighted by its size).

  Args:
    model: Flax module or `apply(variables, x) -> logits` (the model is a static jit argument:
      pass the same function object again to reuse the compiled evaluation).
    variables: Flax variables or a `TrainState`.
    batches: iterable of `{"image": float32[B, H, W, C], "label": int[B]}`.

  Returns:
    The fraction of correctly classified examples (argmax of the logits).

  Raises:
    ValueError: no examples.
  """
  correct, _, count = _evaluate_sums(model, variables, batches)
  return correct / count


def _evaluate_sums(model, variables, batches) -> tuple[int, float, int]:
  """(number correct, summed loss, number of examples) over the batches."""
  if isinstance(variables, TrainState):
    variables = variables.variables
  sums, count = [], 0
  for batch in batches:
    images, labels = _batch_arrays(batch)
    sums.append(_eval_sums(model, variables, images, labels))  # stays on device, no sync
    count += len(labels)
  if count == 0:
    raise ValueError("evaluate got no examples")
  sums = jax.device_get(sums)
  correct = sum(int(s["correct"]) for s in sums)
  loss = sum(float(s["loss_sum"]) for s in sums)
  return correct, loss, count


def _iterate_batches(images, labels, batch_size):
  for start in range(0, len(labels), batch_size):
    yield {"image": images[start:start + batch_size], "label": labels[start:start + batch_size]}


# --------------------------------------------------------------------------------------------
# Data: shards and the batch schedule


def _batch_arrays(batch):
  if not isinstance(batch, Mapping) or "image" not in batch or "label" not in batch:
    keys = sorted(batch) if isinstance(batch, Mapping) else type(batch).__name__
    raise ValueError(f"a batch must be a mapping with 'image' and 'label'; got {keys}")
  images, labels = batch["image"], batch["label"]
  describe = lambda a: f"dtype {getattr(a, 'dtype', None)} shape {getattr(a, 'shape', None)}"
  if getattr(images, "ndim", None) != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(f"'image' must be a float array [B, H, W, C] (raw [0, 1] pixels); got "
                     f"{describe(images)}")
  if (getattr(labels, "ndim", None) != 1 or not jnp.issubdtype(labels.dtype, jnp.integer)
      or labels.shape[0] != images.shape[0]):
    raise ValueError(f"'label' must be an int array [B] matching 'image' {images.shape}; got "
                     f"{describe(labels)}")
  return images, labels


class _Shards:
  """Uniform access to `shards`: a sequence of shards or `get_shard(i)` with `num_shards`."""

  def __init__(self, shards, num_shards, what):
    if isinstance(shards, Sequence) and not isinstance(shards, (str, Mapping)):
      if num_shards not in (None, len(shards)):
        raise ValueError(f"{what}: num_shards={num_shards} but {len(shards)} shards were given")
      self._get, self.num = shards.__getitem__, len(shards)
    elif callable(shards):
      if num_shards is None or num_shards < 1:
        raise ValueError(f"{what}: a get_shard callable needs num_shards >= 1, got {num_shards}")
      self._get, self.num = shards, int(num_shards)
    else:
      raise ValueError(f"{what} must be a sequence of shards or a callable get_shard(i); got "
                       f"{type(shards).__name__}")
    if self.num < 1:
      raise ValueError(f"{what}: no shards")
    self.what = what

  def __getitem__(self, index: int):
    shard = self._get(int(index))
    if isinstance(shard, Sequence) and shard and isinstance(shard[0], Mapping):
      shard = {k: np.stack([np.asarray(s[k]) for s in shard]) for k in ("image", "label")}
    try:
      images, labels = _batch_arrays(shard)
    except ValueError as e:
      raise ValueError(f"{self.what} shard {index}: {e}") from None
    if len(labels) == 0:
      raise ValueError(f"{self.what} shard {index} is empty")
    return images, labels


def _schedule(shards: _Shards, *, epochs: int, batch_size: int, key: jax.Array,
              start: Sequence[int] = (0, 0, 0)) -> Iterator[tuple]:
  """The batches of a run: per epoch the shard order is a permutation drawn from
  `fold_in(key, epoch)`, and within each shard the samples are permuted (DataLoader shuffle=True,
  drop_last=False, so a shard can end with a smaller batch).

  Yields `(images, labels, epoch, next_position, is_last)`; `next_position = (epoch, shard
  position, batch)` of the following batch, so a run can resume at any step from it.
  """
  start_epoch, start_position, start_batch = start
  for epoch in range(start_epoch, epochs):
    order_key, shard_key = jax.random.split(jax.random.fold_in(key, epoch))
    order = np.asarray(jax.random.permutation(order_key, shards.num))
    first = start_position if epoch == start_epoch else 0
    for position in range(first, shards.num):
      images, labels = shards[order[position]]
      n = len(labels)
      permutation = np.asarray(jax.random.permutation(jax.random.fold_in(shard_key, position), n))
      num_batches = math.ceil(n / batch_size)
      first_batch = start_batch if (epoch, position) == (start_epoch, start_position) else 0
      for b in range(first_batch, num_batches):
        index = permutation[b * batch_size:(b + 1) * batch_size]
        if b + 1 < num_batches:
          next_position = (epoch, position, b + 1)
        elif position + 1 < shards.num:
          next_position = (epoch, position + 1, 0)
        else:
          next_position = (epoch + 1, 0, 0)
        is_last = next_position == (epochs, 0, 0)
        yield images[index], labels[index], epoch, next_position, is_last, num_batches


# --------------------------------------------------------------------------------------------
# Early stopping of Tjoa & Guan


@dataclasses.dataclass
class EarlyStopping:
  """The early-stopping rule of Tjoa & Guan's regular-evaluation mode.

  For each single-shard validation accuracy `acc`: if `acc > best` (the first evaluation always
  counts, best starts at 0), the model is kept as the best, `best = acc` and
  `counter = int(refresh_fraction * counter)`; then if `acc >= target_accuracy` training stops
  (S1). Otherwise `counter += 1` and training stops when `counter >= patience` (S2).

  Attributes:
    patience: n_l, the early-stopping limit (paper: 24 ResNet, 48 AlexNet/VGG).
    refresh_fraction: r_f < 1 (paper: 0.4 ResNet, 0.3 AlexNet/VGG).
    target_accuracy: S1 threshold (paper 0.96).
    counter: the early-stopping counter n_early.
    best_accuracy: best single-shard accuracy so far.
    evaluations: number of updates so far.
  """
  patience: int
  refresh_fraction: float
  target_accuracy: float = PAPER_TARGET_ACCURACY
  counter: int = 0
  best_accuracy: float = 0.0
  evaluations: int = 0

  def __post_init__(self):
    if self.patience < 1:
      raise ValueError(f"patience (n_l) must be >= 1, got {self.patience}")
    if not 0 <= self.refresh_fraction < 1:
      raise ValueError(f"refresh_fraction (r_f) must be in [0, 1), got {self.refresh_fraction}")

  def update(self, accuracy: float) -> tuple[bool, str | None]:
    """Records one validation accuracy.

    Returns:
      `(is_best, stop)`: whether the evaluated model becomes the kept best model (always true on
      the first evaluation), and `STOP_TARGET`, `STOP_PATIENCE` or None.
    """
    first = self.evaluations == 0
    self.evaluations += 1
    if accuracy > self.best_accuracy:
      self.best_accuracy = float(accuracy)
      self.counter = int(self.refresh_fraction * self.counter)
      if accuracy >= self.target_accuracy:
        return True, STOP_TARGET
      return True, None
    self.counter += 1
    return first, (STOP_PATIENCE if self.counter >= self.patience else None)

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------------
# Runs


@dataclasses.dataclass(frozen=True)
class TrainResult:
  """What a training run returns.

  Attributes:
    state: the final `TrainState`.
    history: list of records `{"step", "epoch", "loss", "train_accuracy"}` (loss and training
      accuracy averaged over the steps since the previous record, every `log_every` steps), plus in
      regular-evaluation mode `{"eval_accuracy", "eval_shard", "patience_counter",
      "best_accuracy"}` at every evaluation.
    stop_reason: `STOP_EPOCHS`, `STOP_TARGET` (S1), `STOP_PATIENCE` (S2) or `STOP_MAX_STEPS`.
    best: regular mode: variables `{"params", "batch_stats"}` of the model with the best
      single-shard accuracy (the paper's `.optim` model after S1, else its `.noptim`): the model
      to explain. Continuous mode: None.
    best_accuracy: its single-shard accuracy (regular mode) or None.
    validation_accuracy: accuracy of the final model on all validation shards, computed after S1
      and after the last epoch as in the paper (None otherwise).
  """
  state: TrainState
  history: list[dict[str, Any]]
  stop_reason: str
  best: dict[str, Any] | None = None
  best_accuracy: float | None = None
  validation_accuracy: float | None = None


class _Checkpoints:
  """Orbax CheckpointManager over `workdir/checkpoints`: items "state", "progress" and, in
  regular-evaluation mode, "best" (the variables of the best model so far).

  Each step's folder gets a record of its files' checksums (`files.write_directory_record`)
  once orbax has finished writing it; `restore` uses the newest step that verifies.
  """

  def __init__(self, workdir):
    self.workdir = pathlib.Path(workdir).absolute()
    self.directory = self.workdir / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "best", "progress"),
        options=ocp.CheckpointManagerOptions(
            create=True, preservation_policy=ocp.checkpoint_managers.LatestN(n=2)))
    self._unrecorded = []  # steps saved here whose record waits for orbax to finish

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, best, progress):
    # Orbax writes in a background thread while the loop goes on mutating `progress`: save a
    # snapshot (the JSON round trip also fails here, not in that thread, on a bad value).
    progress = json.loads(json.dumps(progress))
    items = dict(state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress))
    if best is not None:
      items["best"] = ocp.args.StandardSave(best)
    self._record_saved()
    self.manager.save(step, force=True, args=ocp.args.Composite(**items))
    self._unrecorded.append(step)
    _write_history(self.workdir, progress["history"])

  def _record_saved(self):
    """Waits for orbax, then records the steps saved since; drops records of removed steps."""
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      for step in self._unrecorded:
        if (self.directory / str(step)).is_dir():
          files.write_directory_record(self.directory / str(step))
      for step in self._recorded_steps():  # steps orbax's preservation policy deleted
        if not (self.directory / str(step)).is_dir():
          files.record_path(self.directory / str(step)).unlink(missing_ok=True)
    self._unrecorded = []

  def _recorded_steps(self) -> list[int]:
    suffix = files.RECORD_SUFFIX
    names = (p.name[1:-len(suffix)] for p in self.directory.glob(f".*{suffix}"))
    return sorted(int(name) for name in names if name.isdigit())

  def forget_deleted(self) -> None:
    """Warns about and drops the records of steps whose folders were deleted (none is left)."""
    for step in self._recorded_steps():
      if not (self.directory / str(step)).is_dir():
        files.warn_damaged(files.DamagedFileError(
            self.directory / str(step), "deleted after it was written (its record remains)"),
            "no checkpoint step is left: training from the start")
        files.record_path(self.directory / str(step)).unlink(missing_ok=True)

  def restore(self, state, best):
    """The newest intact step's `(state, best, progress)` (see `_restore_newest`)."""
    items = dict(state=ocp.args.StandardRestore(state), progress=ocp.args.JsonRestore())
    if best is not None:
      items["best"] = ocp.args.StandardRestore(best)
    restored = self._restore_newest(
        lambda step: self.manager.restore(step, args=ocp.args.Composite(**items)))
    return restored["state"], restored["best"] if best is not None else None, restored["progress"]

  def restore_progress(self) -> dict:
    """The newest intact step's "progress" item (damaged newer steps are left in place)."""
    return self._restore_newest(
        lambda step: self.manager.restore(step, args=ocp.args.Composite(
            progress=ocp.args.JsonRestore())), discard=False)["progress"]

  def _restore_newest(self, restore, *, discard: bool = True):
    """`restore(step)` of the newest step that verifies against its record.

    Damaged steps (and recorded steps whose folder was deleted) are reported with a
    `files.DamagedFileWarning`; once an older step is usable they are deleted (with
    `discard`), so training recomputes them. A step without a record is used if orbax
    restores it (with a warning), and recorded from then on.

    Raises:
      files.DamagedFileError: no step is usable; the message says how to start again.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    fix = (f"no checkpoint step to resume from: delete {self.directory} (and "
           f"{self.workdir / 'history.json'}) and rerun to train from the start")
    newest = steps[0] if steps else -1
    damaged = []
    for step in self._recorded_steps():
      if step > newest:
        files.warn_damaged(files.DamagedFileError(
            self.directory / str(step), "deleted after it was written (its record remains)"),
            "resuming from an older checkpoint step")
        damaged.append(step)
    for step in steps:
      directory = self.directory / str(step)
      recorded = True
      try:
        files.verify_directory(directory)
      except files.UnrecordedFileError:
        recorded = False
      except files.DamagedFileError as error:
        files.warn_damaged(error, f"checkpoint step {step} is not used; trying an older one")
        damaged.append(step)
        continue
      try:
        restored = restore(step)
      except Exception as error:  # pylint: disable=broad-except
        if recorded:
          raise
        files.warn_damaged(files.DamagedFileError(
            directory, f"{files.UNRECORDED}, and orbax cannot restore it ({type(error).__name__}: "
            f"{error})"), f"checkpoint step {step} is not used; trying an older one")
        damaged.append(step)
        continue
      if not recorded:
        warnings.warn(f"{directory} is unverified: {files.UNRECORDED}; orbax restores it, so "
                      "it is used and recorded now", files.DamagedFileWarning, stacklevel=3)
        if jax.process_index() == 0:
          files.write_directory_record(directory)
      if damaged:
        warnings.warn(f"resuming from checkpoint step {step} of {self.directory}; the damaged "
                      f"steps {sorted(damaged)} are {'deleted and ' if discard else ''}"
                      "recomputed from it", files.DamagedFileWarning, stacklevel=3)
        if discard and jax.process_index() == 0:
          for bad in damaged:
            if bad in self.manager.all_steps():
              self.manager.delete(bad)
            files.remove_verified(self.directory / str(bad))
      return restored
    raise files.DamagedFileError(self.directory, "no checkpoint step verifies (steps "
                                 f"{sorted(steps)}; damaged {sorted(damaged)})", fix)

  def close(self):
    self._record_saved()
    self.manager.close()


def _write_history(workdir: pathlib.Path, history: list[dict]) -> None:
  """history.json (verified, `files.write_verified`) and history.csv (union of fields, empty
  cells where a record lacks one)."""
  workdir.mkdir(parents=True, exist_ok=True)
  files.write_verified(workdir / "history.json", json.dumps(history, indent=1))
  fields = [f for f in _HISTORY_FIELDS if any(f in r for r in history)]
  fields += sorted({k for r in history for k in r} - set(fields))
  text = io.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=fields)
  writer.writeheader()
  writer.writerows(history)
  with files.atomic_open(workdir / "history.csv", "wb") as stream:
    stream.write(text.getvalue().encode("utf-8"))


def load_history(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Reads `workdir/history.json` as written by a training run, checked against its record.

  A damaged, deleted or unrecorded `history.json` is rebuilt from the newest intact
  checkpoint of the workdir (with a `files.DamagedFileWarning`) and rewritten.

  Raises:
    FileNotFoundError: no history and no checkpoint in `workdir`.
    files.DamagedFileError: the history is damaged and no checkpoint can rebuild it.
  """
  workdir = pathlib.Path(workdir)
  path = workdir / "history.json"
  try:
    return json.loads(files.read_verified(path))
  except (FileNotFoundError, files.DamagedFileError) as error:
    if not (workdir / "checkpoints").is_dir():
      if isinstance(error, files.DamagedFileError):
        raise files.DamagedFileError(path, error.reason, "rerun the training call that wrote "
                                     "it (no checkpoint here to rebuild it from)") from None
      raise
    if isinstance(error, files.DamagedFileError):
      files.warn_damaged(error, "rebuilding it from the newest intact checkpoint")
  checkpoints = _Checkpoints(workdir)
  try:
    history = checkpoints.restore_progress()["history"]
  finally:
    checkpoints.close()
  _write_history(workdir, history)
  return history


def _host_metrics(pending) -> list[list[float]]:
  return [[float(m["loss"]), float(m["accuracy"])] if isinstance(m, dict) else list(m)
          for m in jax.device_get(pending)]


def _run(*, mode: str, model: nn.Module, state: TrainState, shards, num_shards, tx, epochs,
         batch_size, key, workdir, checkpoint_every, max_steps, log_every, progress, callback,
         validation=None, stopper=None, eval_every=None, eval_batch_size=None) -> TrainResult:
  """The loop behind both training modes (see their docstrings)."""
  if epochs < 0 or batch_size < 1 or log_every < 1:
    raise ValueError(f"need epochs >= 0, batch_size >= 1, log_every >= 1; got {epochs}, "
                     f"{batch_size}, {log_every}")
  if checkpoint_every is not None and checkpoint_every < 1:
    raise ValueError(f"checkpoint_every must be >= 1 or None, got {checkpoint_every}")
  train_shards = _Shards(shards, num_shards, "training shards")
  key = _raw_key(key)
  data_key, validation_key = jax.random.split(key)
  config = {"mode": mode, "epochs": epochs, "batch_size": batch_size,
            "num_shards": train_shards.num, "key": [int(k) for k in key]}
  loop = {"config": config, "position": [0, 0, 0], "history": [], "pending": [],
          "stop_reason": None, "early_stopping": stopper.to_json() if stopper else None,
          "validation_accuracy": None}
  best = state.variables if stopper is not None else None
  checkpoints = _Checkpoints(workdir) if workdir is not None else None
  bar = None
  try:
    if checkpoints is not None and checkpoints.latest_step() is None:
      checkpoints.forget_deleted()
    elif checkpoints is not None:
      state, best, loop = checkpoints.restore(state, best)
      if loop["config"] != config:
        raise ValueError(f"{workdir} holds a run with settings {loop['config']}, not {config}; "
                         f"use a new workdir")
      if stopper is not None:
        stopper = EarlyStopping(**loop["early_stopping"])
    history, pending = loop["history"], loop["pending"]
    stop = loop["stop_reason"] if loop["stop_reason"] in FINISHED else None
    step = int(state.step)
    if stop is None and max_steps is not None and step >= max_steps:
      stop = STOP_MAX_STEPS
    if stop is None:
      batches = _schedule(train_shards, epochs=epochs, batch_size=batch_size, key=data_key,
                          start=tuple(loop["position"]))
      for images, labels, epoch, next_position, is_last, num_batches in batches:
        if bar is None:
          total = epochs * train_shards.num * num_batches  # assumes equal shards: an estimate
          done = ((loop["position"][0] * train_shards.num + loop["position"][1]) * num_batches
                  + loop["position"][2])
          if max_steps is not None:  # the run stops at max_steps before the last epoch
            total = done + min(total - done, max_steps - step)
          bar = tqdm.tqdm(total=total, initial=done, unit="step", disable=not progress,
                          desc=mode, dynamic_ncols=True)
        state, metrics = _train_step(model, tx, state, images, labels)
        step += 1
        pending.append(metrics)
        record = {}
        if step % log_every == 0:
          values = np.asarray(_host_metrics(pending), np.float64)
          record.update(loss=float(values[:, 0].mean()), train_accuracy=float(values[:, 1].mean()))
          pending.clear()
          bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
        if stopper is not None and step % eval_every == 0:
          shard_index = int(jax.random.randint(jax.random.fold_in(validation_key,
                                                                  stopper.evaluations),
                                               (), 0, validation.num))
          images_v, labels_v = validation[shard_index]
          correct, _, count = _evaluate_sums(
              model, state, _iterate_batches(images_v, labels_v, eval_batch_size))
          accuracy = correct / count
          is_best, stop = stopper.update(accuracy)
          if is_best:
            best = state.variables
          record.update(eval_accuracy=accuracy, eval_shard=shard_index,
                        patience_counter=stopper.counter, best_accuracy=stopper.best_accuracy)
        if stop is None and is_last:
          stop = STOP_EPOCHS
        if stop is None and max_steps is not None and step >= max_steps:
          stop = STOP_MAX_STEPS
        if stop == STOP_EPOCHS and pending:  # the last, partial averaging window
          values = np.asarray(_host_metrics(pending), np.float64)
          record.update(loss=float(values[:, 0].mean()), train_accuracy=float(values[:, 1].mean()))
          pending.clear()
        if stopper is not None and stop in (STOP_TARGET, STOP_EPOCHS):
          loop["validation_accuracy"] = _evaluate_all(model, state, validation, eval_batch_size)
        if record:
          history.append({"step": step, "epoch": epoch, **record})
        loop["position"] = list(next_position)
        if checkpoints is not None and (stop is not None or (
            checkpoint_every is not None and step % checkpoint_every == 0)):
          loop.update(pending=_host_metrics(pending), stop_reason=stop,
                      early_stopping=stopper.to_json() if stopper else None)
          checkpoints.save(step, state, best, loop)
          pending = loop["pending"]
        bar.update(1)
        if callback is not None:
          callback(step, state, record)
        if stop is not None:
          break
      if stop is None:  # zero epochs or resumed past the end
        stop = STOP_EPOCHS
  finally:
    if bar is not None:
      bar.close()
    if checkpoints is not None:
      checkpoints.close()
  if workdir is not None:
    _write_history(pathlib.Path(workdir), history)
  return TrainResult(state=state, history=history, stop_reason=stop,
                     best=best,
                     best_accuracy=stopper.best_accuracy if stopper is not None else None,
                     validation_accuracy=loop["validation_accuracy"])


def _evaluate_all(model, state, validation: _Shards, batch_size) -> float:
  correct = count = 0
  for i in range(validation.num):
    images, labels = validation[i]
    shard_correct, _, n = _evaluate_sums(model, state,
                                         _iterate_batches(images, labels, batch_size))
    correct += shard_correct
    count += n
  return correct / count


def train_continuous(model: nn.Module, state: TrainState, shards, *,
                     tx: optax.GradientTransformation, epochs: int, batch_size: int,
                     key: jax.Array, num_shards: int | None = None,
                     workdir: str | os.PathLike | None = None,
                     checkpoint_every: int | None = None, max_steps: int | None = None,
                     log_every: int = 4, progress: bool = True,
                     callback: Callable[[int, TrainState, dict], None] | None = None
                     ) -> TrainResult:
  """Phase 1 of Tjoa & Guan, "training in continuous mode": `epochs` passes over the shards.

  Each epoch visits every shard once in an order drawn from `key`; inside a shard the samples are
  shuffled and split into batches of `batch_size`, the last one possibly smaller. The model runs
  in training mode (dropout, batch statistics). Every `log_every` (paper: 4) steps the mean loss
  and training accuracy of those steps are appended to the history.

  With a `workdir`, a checkpoint is saved every `checkpoint_every` steps and when the run stops;
  calling again with the same arguments resumes from the latest one (or returns the finished
  result). `max_steps` stops once `state.step` reaches it (resumable, stop reason "max_steps").

  Args:
    model: Flax module with `__call__(x, *, train)`.
    state: the starting `TrainState` (ignored in favour of the checkpoint when resuming; it is the
      template the checkpoint is restored into).
    shards: sequence of shards, or a callable `get_shard(i)` (then pass `num_shards`); a shard
      is `{"image": float32[n, H, W, C], "label": int[n]}` or a sequence of such samples.
    tx: optimiser of `state.opt_state`.
    epochs: passes over the data (paper: 2 ResNet, 16 AlexNet, 4 VGG).
    batch_size: paper 4 ResNet, 16 AlexNet/VGG.
    key: PRNG key for the shard and sample order.
    num_shards: number of shards when `shards` is a callable.
    workdir: directory for checkpoints and history files; None keeps nothing on disk.
    checkpoint_every: save every this many steps (besides the final save); None: only at the end.
    max_steps: stop when the global step reaches this.
    log_every: steps per history record.
    progress: show a tqdm bar (steps/s, ETA; the total assumes shards of equal size).
    callback: called as `callback(step, state, record)` after every step (record may be empty).

  Returns:
    A `TrainResult` (stop reason "epochs" or "max_steps").

  Raises:
    ValueError: malformed shards or settings, or a workdir that holds a different run.
  """
  return _run(mode="continuous", model=model, state=state, shards=shards, num_shards=num_shards,
              tx=tx, epochs=epochs, batch_size=batch_size, key=key, workdir=workdir,
              checkpoint_every=checkpoint_every, max_steps=max_steps, log_every=log_every,
              progress=progress, callback=callback)


def train_regular_evaluation(model: nn.Module, state: TrainState, shards, validation_shards, *,
                             tx: optax.GradientTransformation, epochs: int, batch_size: int,
                             key: jax.Array, patience: int, refresh_fraction: float,
                             target_accuracy: float = PAPER_TARGET_ACCURACY,
                             eval_every: int = PAPER_EVAL_EVERY, eval_batch_size: int = 64,
                             num_shards: int | None = None,
                             num_validation_shards: int | None = None,
                             workdir: str | os.PathLike | None = None,
                             checkpoint_every: int | None = None, max_steps: int | None = None,
                             log_every: int = 4, progress: bool = True,
                             callback: Callable[[int, TrainState, dict], None] | None = None
                             ) -> TrainResult:
  """Phase 2 of Tjoa & Guan, "training in regular evaluation mode", with early stopping.

  Training proceeds as in `train_continuous`. Whenever the global step is a multiple of
  `eval_every` (paper: 4; the step count carries on from the base model, as the paper's iteration
  counter does), the model is evaluated (eval mode) on ONE validation shard drawn at random from
  `key`, and `EarlyStopping` (n_l = `patience`, r_f = `refresh_fraction`) decides:
    * the first evaluation, and every improvement of the best single-shard accuracy, keeps the
      current model as `best`;
    * S1 ("target"): an improvement with accuracy >= `target_accuracy` stops training, and the
      model is evaluated on all validation shards (`validation_accuracy`);
    * S2 ("patience"): the early-stopping counter reaches `patience`;
    * if neither fires within `epochs`, the final model is evaluated on all validation shards.
  `TrainResult.best` is the model the paper explains (`.optim` after S1, else `.noptim`).

  Args:
    model, state, shards, tx, epochs, batch_size, key, num_shards, workdir, checkpoint_every,
      max_steps, log_every, progress, callback: as in `train_continuous`.
    validation_shards: sequence of validation shards or a callable (then pass
      `num_validation_shards`); paper: 8 shards of 200 images.
    patience: n_l (paper: 24 ResNet, 48 AlexNet/VGG; see `paper_settings`).
    refresh_fraction: r_f (paper: 0.4 ResNet, 0.3 AlexNet/VGG).
    target_accuracy: S1 threshold (paper 0.96).
    eval_every: training steps between evaluations (paper 4).
    eval_batch_size: batch size for evaluation (eval mode: it does not change the result).

  Returns:
    A `TrainResult` with `best`, `best_accuracy` and, after S1 or the last epoch,
    `validation_accuracy`.
  """
  if eval_every < 1 or eval_batch_size < 1:
    raise ValueError(f"eval_every and eval_batch_size must be >= 1, got {eval_every}, "
                     f"{eval_batch_size}")
  stopper = EarlyStopping(patience=patience, refresh_fraction=refresh_fraction,
                          target_accuracy=target_accuracy)
  validation = _Shards(validation_shards, num_validation_shards, "validation shards")
  return _run(mode="regular_evaluation", model=model, state=state, shards=shards,
              num_shards=num_shards, tx=tx, epochs=epochs, batch_size=batch_size, key=key,
              workdir=workdir, checkpoint_every=checkpoint_every, max_steps=max_steps,
              log_every=log_every, progress=progress, callback=callback, validation=validation,
              stopper=stopper, eval_every=eval_every, eval_batch_size=eval_batch_size)


def train_branches(model: nn.Module, base: TrainState, shards, validation_shards, *,
                   tx: optax.GradientTransformation, key: jax.Array,
                   num_branches: int = PAPER_NUM_BRANCHES,
                   workdir: str | os.PathLike | None = None, **kwargs) -> list[TrainResult]:
  """Trains `num_branches` models from one base model in regular-evaluation mode (phase 2).

  Branch `i` starts from `base` with a fresh optimiser state (`branch`) and its own keys, both
  drawn from `fold_in(key, i)`, and keeps its checkpoints in `workdir/branch_<i>` (so an
  interrupted set of branches resumes branch by branch).

  Args:
    model, base: the model and the phase-1 state.
    shards, validation_shards: as in `train_regular_evaluation`.
    tx: optimiser for the branches (fresh state each).
    key: PRNG key.
    num_branches: paper 5.
    workdir: parent directory of the branch workdirs, or None.
    **kwargs: passed to `train_regular_evaluation` (epochs, batch_size, patience, ...).

  Returns:
    One `TrainResult` per branch.
  """
  if num_branches < 1:
    raise ValueError(f"num_branches must be >= 1, got {num_branches}")
  key = _raw_key(key)
  results = []
  for i in range(num_branches):
    state_key, run_key = jax.random.split(jax.random.fold_in(key, i))
    branch_dir = None if workdir is None else pathlib.Path(workdir) / f"branch_{i}"
    results.append(train_regular_evaluation(
        model, branch(base, tx=tx, key=state_key), shards, validation_shards, tx=tx,
        key=run_key, workdir=branch_dir, **kwargs))
  return results
