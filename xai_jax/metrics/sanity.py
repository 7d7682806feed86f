"""Sanity checks for saliency maps: model-parameter and data randomisation.

Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018 (arXiv:1810.03292):

* **Cascading randomisation** re-initialises the layers from the logits down, one more at
  each stage, and recomputes the explanation at every stage.
* **Independent randomisation** re-initialises one layer at a time, all others trained.
* **Data randomisation** trains the same architecture on permuted labels and compares its
  explanations with those of the model trained on the true labels. The training is an
  argument (`train_fn`, e.g. `xai_jax.pipelines.sanity_checks.label_memorizer`): the metrics
  import no training loop.

A "layer" is a top-level entry of `variables["params"]` (for ResNet a whole residual
block, since blocks are submodules); `layer_order` lists them in reverse call order. The
explainer is an argument (metrics never import explainers): any
`explainer(model, variables, x, target) -> attributions`. It is compiled once and every
stage only swaps parameter values, so no stage recompiles.

Similarity between the original and the randomised explanations is in
`xai_jax.metrics.similarity`. Every `key` is a `jax.random.key(seed)` (or a legacy
`jax.random.PRNGKey(seed)`); an integer seed raises a ValueError (`xai_jax.keys.check_key`).
"""

from typing import Any, Callable, Literal, NamedTuple, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from xai_jax import xla
from xai_jax.keys import check_key
from xai_jax.metrics import similarity

Explainer = Callable[[Any, Any, jax.Array, jax.Array], jax.Array]
INITS = ("model", "truncated_normal")


def layer_order(model, variables, x: jax.Array) -> tuple[str, ...]:
  """The layers of a network from the logits down (blocks for ResNet).

  The order is the order in which the forward pass calls the top-level submodules
  (recorded with `flax.linen.intercept_methods` under `jax.eval_shape`, so no FLOPs):
  parameter dicts cannot tell, since JAX sorts dict keys.

  Args:
    model: the Flax module.
    variables: its variables; only top-level submodules with parameters count.
    x: a sample input `float32[N, H, W, C]` (only its shape matters).

  Returns:
    Top-level parameter names, last layer first.
  """
  with_params = set(flax.core.unfreeze(variables)["params"])
  called: list[str] = []

  def record(next_fun, args, kwargs, context):
    path = context.module.path
    if path and path[0] in with_params and path[0] not in called:
      called.append(path[0])
    return next_fun(*args, **kwargs)

  def forward(variables, x):
    with nn.intercept_methods(record):
      return model.apply(variables, x)

  jax.eval_shape(forward, variables, x)
  missing = sorted(with_params - set(called))
  return tuple(reversed(called + missing))


def _check_layers(variables, layers: Sequence[str]) -> None:
  known = list(flax.core.unfreeze(variables)["params"])
  unknown = [name for name in layers if name not in known]
  if unknown:
    raise ValueError(f"unknown layers {unknown}; the model has {known}")


def fresh_variables(model, variables, x, *, key: jax.Array, init: str = "model",
                    std: float = 0.01):
  """A complete set of re-initialised variables, drawn once for all stages.

  Args:
    model: the Flax module (used for its own initialisers when `init="model"`).
    variables: the trained variables (shapes and tree structure to match).
    x: a sample input `float32[N, H, W, C]` (only its shape matters).
    key: PRNG key of the re-initialisation.
    init: "model" (every layer's own initialiser, as the paper re-runs the initialisers
      of the trainable variables) or "truncated_normal" (every parameter drawn from a
      normal with standard deviation `std`, truncated at two standard deviations).
    std: standard deviation for "truncated_normal".

  Returns:
    Variables with the structure of `variables`: new `"params"`, the trained
    `"batch_stats"` (`randomize` decides whether to keep them).
  """
  if init not in INITS:
    raise ValueError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
  check_key(key)
  variables = flax.core.unfreeze(variables)
  if init == "model":
    if model is None:
      raise ValueError('init="model" needs the model whose initialisers to re-run')
    initialised = xla.jit(model.init)(key, jnp.zeros((1,) + tuple(x.shape[1:]), x.dtype))
    params = flax.core.unfreeze(initialised)["params"]
  else:
    leaves, treedef = jax.tree_util.tree_flatten(variables["params"])
    keys = jax.random.split(key, len(leaves))
    params = jax.tree_util.tree_unflatten(treedef, [
        std * jax.random.truncated_normal(k, -2.0, 2.0, leaf.shape, leaf.dtype)
        for k, leaf in zip(keys, leaves)])
  mismatched = jax.tree_util.tree_map(lambda a, b: a.shape != b.shape, params,
                                      variables["params"])
  if any(jax.tree_util.tree_leaves(mismatched)):
    raise ValueError("re-initialised parameters do not match the trained ones in shape; "
                     "is `model` the architecture of `variables`?")
  return {**variables, "params": params}


def randomize(variables, layers: Sequence[str], *, key: jax.Array | None = None,
              init: Literal["model", "truncated_normal"] = "model", std: float = 0.01,
              keep_batch_stats: bool = True, model=None, x: jax.Array | None = None,
              fresh=None):
  """Replaces the parameters of `layers` by re-initialised values.

  Args:
    variables: trained Flax variables.
    layers: top-level parameter names to randomise (see `layer_order`).
    key: PRNG key of the re-initialisation (unless `fresh` is given).
    init, std: see `fresh_variables`; `init="model"` also needs `model` and a sample `x`.
    keep_batch_stats: keep the trained batch-norm statistics of the randomised layers
      (the paper's default) or reset them to mean 0, variance 1 (torch's
      `reset_parameters`, as Quantus does).
    model: the Flax module, for `init="model"`.
    x: a sample input `float32[N, H, W, C]`, for `init="model"`.
    fresh: precomputed `fresh_variables(...)`; stages of one experiment share one draw
      this way, and nothing is initialised again.

  Returns:
    Variables with the same structure and shapes as `variables`.

  Raises:
    ValueError: for unknown layers, or missing `key`/`model`/`x` when `fresh` is None.
  """
  if fresh is None:
    if key is None:
      raise ValueError("randomize needs a PRNG `key` (or precomputed `fresh` variables)")
    check_key(key)
    if init == "model" and (model is None or x is None):
      raise ValueError('init="model" re-runs the model\'s initialisers: pass `model` and a '
                       "sample input `x`, or use init=\"truncated_normal\"")
    fresh = fresh_variables(model, variables, x, key=key, init=init, std=std)
  _check_layers(variables, layers)
  variables = flax.core.unfreeze(variables)
  params = dict(variables["params"])
  for name in layers:
    params[name] = fresh["params"][name]
  result = {**variables, "params": params}
  if not keep_batch_stats and "batch_stats" in variables:
    stats = dict(variables["batch_stats"])
    for name in layers:
      if name in stats:
        stats[name] = jax.tree_util.tree_map_with_path(
            lambda path, leaf: (jnp.ones_like(leaf) if path[-1].key == "var"
                                else jnp.zeros_like(leaf)), stats[name])
    result["batch_stats"] = stats
  return result


class RandomizationResult(NamedTuple):
  """Explanations of one batch at every randomisation stage.

  Attributes:
    stages: stage names; `stages[0] == "original"`, then for cascading randomisation the
      last layer randomised so far, for independent randomisation the one layer.
    explanations: `float32[S, N, ...]`, the explanation at each stage.
  """
  stages: tuple[str, ...]
  explanations: np.ndarray


def _run_stages(explainer, model, variables, x, target, stage_variables, stage_names):
  compiled = xla.jit(explainer, static_argnums=0)
  outputs = [np.asarray(compiled(model, variables, x, target))]
  for stage in stage_variables:
    outputs.append(np.asarray(compiled(model, stage, x, target)))
  return RandomizationResult(("original",) + tuple(stage_names), np.stack(outputs))


def cascading_randomization(explainer: Explainer, model, variables, x, target, *,
                            key: jax.Array, layers: Sequence[str] | None = None,
                            init: Literal["model", "truncated_normal"] = "model",
                            std: float = 0.01,
                            keep_batch_stats: bool = True) -> RandomizationResult:
  """Explanations as layers are re-initialised from the logits down, cumulatively.

  Args:
    explainer: `explainer(model, variables, x, target) -> attributions`, e.g.
      `functools.partial(xai_jax.explain.integrated_gradients, steps=50)`.
    model: the Flax module.
    variables: trained variables.
    x: `float32[N, H, W, C]` images.
    target: `int32[N]` classes to explain (the paper uses the trained model's prediction).
    key: PRNG key of the re-initialisation (one draw shared by all stages).
    layers: the order to randomise in; default `layer_order(model, variables, x)`.
    init, std: see `fresh_variables`.
    keep_batch_stats: see `randomize`.

  Returns:
    A `RandomizationResult` with `len(layers) + 1` stages.
  """
  check_key(key)
  layers = tuple(layer_order(model, variables, x) if layers is None else layers)
  _check_layers(variables, layers)
  fresh = fresh_variables(model, variables, x, key=key, init=init, std=std)
  stages = (randomize(variables, layers[:i + 1], fresh=fresh, keep_batch_stats=keep_batch_stats)
            for i in range(len(layers)))
  return _run_stages(explainer, model, variables, x, target, stages, layers)


def independent_randomization(explainer: Explainer, model, variables, x, target, *,
                              key: jax.Array, layers: Sequence[str] | None = None,
                              init: Literal["model", "truncated_normal"] = "model",
                              std: float = 0.01,
                              keep_batch_stats: bool = True) -> RandomizationResult:
  """Explanations with one layer re-initialised at a time, all others trained.

  Arguments as `cascading_randomization`.
  """
  check_key(key)
  layers = tuple(layer_order(model, variables, x) if layers is None else layers)
  _check_layers(variables, layers)
  fresh = fresh_variables(model, variables, x, key=key, init=init, std=std)
  stages = (randomize(variables, (name,), fresh=fresh, keep_batch_stats=keep_batch_stats)
            for name in layers)
  return _run_stages(explainer, model, variables, x, target, stages, layers)


def similarity_table(result: RandomizationResult, *,
                     measures: Sequence[str] = similarity.MEASURES) -> pd.DataFrame:
  """Similarity of every stage's explanation to the original one.

  Args:
    result: from `cascading_randomization` or `independent_randomization`.
    measures: names from `xai_jax.metrics.similarity.MEASURES`.

  Returns:
    A long table with columns `stage_index, stage, image, measure, value`.
  """
  original = result.explanations[0]
  rows = []
  for index, (stage, explanation) in enumerate(zip(result.stages, result.explanations)):
    values = similarity.similarities(original, explanation, measures=measures)
    for measure, per_image in values.items():
      rows.extend({"stage_index": index, "stage": stage, "image": i, "measure": measure,
                   "value": float(v)} for i, v in enumerate(per_image))
  return pd.DataFrame(rows, columns=["stage_index", "stage", "image", "measure", "value"])


def input_times_random_gradient(x: jax.Array, *, key: jax.Array,
                                distribution: Literal["truncated_normal", "uniform"] =
                                "truncated_normal", scale: float = 1.0):
  """Two maps `x * u` and `x * v` with independent random "gradients" u, v (Sec. 5.2).

  The paper's experiment: if an input-times-gradient map is similar for unrelated
  gradients, the input dominates the product. Compare the pair with
  `xai_jax.metrics.similarity.similarities`.

  Args:
    x: `float32[N, H, W, C]`.
    key: PRNG key.
    distribution: "truncated_normal" (standard normal truncated at +-2, times `scale`) or
      "uniform" (on [-scale, scale]).
    scale: spread of the random gradients.

  Returns:
    `(x * u, x * v)`, each `float32[N, H, W, C]`.
  """
  check_key(key)
  key_u, key_v = jax.random.split(key)
  if distribution == "truncated_normal":
    draw = lambda k: scale * jax.random.truncated_normal(k, -2.0, 2.0, x.shape, x.dtype)
  elif distribution == "uniform":
    draw = lambda k: jax.random.uniform(k, x.shape, x.dtype, -scale, scale)
  else:
    raise ValueError(f"unknown distribution {distribution!r}; valid: truncated_normal, uniform")
  return x * draw(key_u), x * draw(key_v)


class DataRandomizationResult(NamedTuple):
  """Explanations of the same images by a model trained on true and on permuted labels.

  Attributes:
    true_labels: `float32[N, ...]`, explanations of the model trained on the true labels.
    random_labels: `float32[N, ...]`, explanations of the model trained on permuted labels.
    train_accuracy: the permuted-label model's accuracy on its (permuted) training set.
    steps: training steps the permuted-label model took.
  """
  true_labels: np.ndarray
  random_labels: np.ndarray
  train_accuracy: float
  steps: int


def permute_labels(labels, *, key: jax.Array) -> np.ndarray:
  """A random permutation of a label vector (the paper's randomised-label training set)."""
  check_key(key)
  labels = np.asarray(labels)
  return labels[np.asarray(jax.random.permutation(key, len(labels)))]


class LabelTraining(NamedTuple):
  """What a `data_randomization` training function returns.

  Attributes:
    variables: the variables of the model trained on the given labels.
    train_accuracy: its accuracy on that (permuted) training set.
    steps: the training steps it took.
  """
  variables: Any
  train_accuracy: float
  steps: int


TrainFn = Callable[..., LabelTraining]
"""`train_fn(images, labels, *, init_key, train_key) -> LabelTraining`: trains the architecture
from scratch on `images` (`float32[M, H, W, C]`) with `labels` (`int32[M]`), initialising with
`init_key` and ordering the batches with `train_key` (e.g.
`xai_jax.pipelines.sanity_checks.label_memorizer`)."""


def data_randomization(explainer: Explainer, model, variables, train_images, train_labels,
                       x, target, *, key: jax.Array,
                       train_fn: TrainFn) -> DataRandomizationResult:
  """Trains the architecture on permuted labels, then explains the same images with both.

  Adebayo et al., Sec. 4: the labels of the training set are randomly permuted and the
  same architecture is trained until its training accuracy exceeds 95% (it memorises);
  an explanation that looks alike for both models does not depend on the
  relationship between images and labels. The training is an argument (`train_fn`), so the
  metrics do not depend on a training loop.

  Args:
    explainer: `explainer(model, variables, x, target) -> attributions`.
    model: the Flax module.
    variables: the model trained on the true labels.
    train_images: `float32[M, H, W, C]` training images.
    train_labels: `int32[M]` their true labels (permuted here with `key`).
    x: `float32[N, H, W, C]` images to explain.
    target: `int32[N]` classes to explain for both models (the paper explains each
      model's own prediction: pass `None`-free targets computed as you prefer).
    key: PRNG key, split in three: the label permutation, then `train_fn`'s `init_key` and
      `train_key`.
    train_fn: `train_fn(images, labels, *, init_key, train_key) -> LabelTraining` (`TrainFn`).

  Returns:
    A `DataRandomizationResult`.

  Raises:
    ValueError: a key that is not a JAX key, or as `train_fn` (e.g. the permuted-label
      model does not reach its target accuracy).
  """
  check_key(key)
  train_images = np.asarray(train_images)
  key_permute, key_init, key_train = jax.random.split(key, 3)
  shuffled = permute_labels(train_labels, key=key_permute)
  trained = train_fn(train_images, shuffled, init_key=key_init, train_key=key_train)
  compiled = xla.jit(explainer, static_argnums=0)
  return DataRandomizationResult(
      true_labels=np.asarray(compiled(model, variables, x, target)),
      random_labels=np.asarray(compiled(model, trained.variables, x, target)),
      train_accuracy=float(trained.train_accuracy), steps=int(trained.steps))
