"""The explainer contract: what every `xai_jax.models` network exposes to explainers.

Explainers never depend on a particular model file; they depend on this module
(STYLE.md, habit 3). A model is a `flax.linen.Module` with fields
`num_classes: int`, `dtype`, `ops: Ops = DEFAULT_OPS` and
`__call__(self, x, *, train: bool = False) -> float32[N, num_classes]`, where
`x: float32[N, H, W, C]` holds raw pixels (no normalisation inside the model).
It marks three kinds of places and promises a fourth property:

1. **Nonlinearities** (`Ops`). Every ReLU, LeakyReLU and max-pool is called as
   `self.ops.relu(x)`, `self.ops.leaky_relu(x, negative_slope)` and
   `self.ops.max_pool(x, window=, stride=, padding=)`, never `jax.nn.relu`
   directly. `with_ops(model, Ops(relu=guided_relu))` returns the same network
   with those functions replaced, which is how guided backprop, deconvolution
   and DeepLift change a backward rule (typically a `jax.custom_vjp`). For
   DeepLift an explainer runs the model on `concat([x, x_ref], axis=0)` and its
   ops split their input in halves along axis 0; every model is batch-wise
   independent in eval mode, so this is legal.
2. **Activations.** `x = activation(self, name, x)` right after every hidden
   ReLU / LeakyReLU output and every residual block output, in forward order.
   It sows `x` into the collection `"activations"` and adds a zero probe from
   `"activation_probes"` (`Module.perturb`), so that the gradient with respect
   to the activation is the gradient with respect to the probe.
3. **Bias sites.** `y = bias_site(self, name, y, bias)` on every
   pre-activation output where a bias enters: a conv or dense output after its
   bias is added, and every batch-norm output. `bias: float32[C]` is the
   effective bias: the conv/dense bias, and for batch norm
   `beta - mean * gamma / sqrt(var + eps)` with the running statistics (batch
   statistics in train mode). It is sown into `"biases"`, and a zero probe from
   `"bias_probes"` is added to `y`. FullGrad's completeness
   `sum(x * dx) + sum_sites sum(bias_grad * bias) == logit` holds exactly for
   the piecewise-linear networks here (eval mode) because every bias is covered.

4. **Linear layers.** Every module that owns parameters itself (rather than
   through submodules) is an affine layer of its first positional argument in
   eval mode: a conv (`kernel` `[kh, kw, c_in, c_out]`, optional `bias`), a
   dense layer (`kernel` `[d_in, d_out]`, optional `bias`) or a batch norm (`scale`,
   `bias`, statistics in `"batch_stats"`). Everything else a model does
   (ReLU / LeakyReLU, max and average pooling, additions, concatenation,
   flattening, dropout in eval mode) has no parameters. `linear_layer_rule`
   lets an explainer replace each linear layer's output (e.g. LRP's rules,
   which need the layer's input, weights and output) without knowing the
   model; `linear_layers` lists them. Both raise ValueError for a module that
   owns parameters but is not such a layer.

Names are the paths of the marking module joined with "/" and the site name,
e.g. VGG16 activation `"features_29"` (torchvision's `features.29` ReLU),
bias site `"features_28/bias"` (conv `features.28`) or ResNet
`"layer4_2/relu3"` / `"layer4_2/bn3/bias"`. Activation names follow
torchvision's module names (with "." -> "_"); bias sites are `<layer>/bias`.
Every model also has `gradcam_layer: str`, the default Grad-CAM activation
(the last conv block output: VGG/AlexNet's last conv ReLU before the last
max-pool, ResNet's last block output); see `default_gradcam_layer`. Every model
also has `deepmaps_layers: tuple[str, ...]`, the spatial activations DeepMaps
sums by default, in forward order (Grabska-Barwinska et al. 2021: every conv
ReLU of VGG16; the stem ReLU and the 16 block outputs of ResNet-50); empty for
a network without spatial activations (the MLP). See
`xai_jax.explain.deepmaps_layers`.

Nothing is sown or probed during `model.init` (the variables then contain only
`"params"` and, for batch-norm models, `"batch_stats"`), and without the probe
collections `perturb` is a no-op, so plain `model.apply(variables, x)` costs
nothing extra.

Score convention (as Captum): every gradient is that of
`sum_n logits[n, target[n]]` on the raw logits (no softmax), computed in eval
mode. `tap_gradients` obtains the input gradient, all activation gradients and
all bias-site gradients from ONE `jax.vjp` over `(x, activation probes, bias
probes)`. All functions are pure and work under `jit` and `vmap`.

Dicts are returned in forward order, but note that JAX sorts dict keys when a
dict passes through `jit`/`vmap` outputs; use `activation_names` /
`bias_site_names` (forward order) to iterate in order.

Example:
  >>> model = xai_jax.models.get("vgg16")
  >>> out = tap_gradients(model, variables, x, target)
  >>> out.activation_grads[model.gradcam_layer]   # float32[N, 14, 14, 512]
"""

import contextlib
import dataclasses
import threading
from typing import Any, Callable, NamedTuple

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

from xai_jax.models.base import shape_cached
from xai_jax.models.pooling import max_pool

Array = jax.Array

ACTIVATIONS = "activations"
ACTIVATION_PROBES = "activation_probes"
BIASES = "biases"
BIAS_PROBES = "bias_probes"
_TAP_COLLECTIONS = (ACTIVATIONS, ACTIVATION_PROBES, BIASES, BIAS_PROBES)


@dataclasses.dataclass(frozen=True)
class Ops:
  """The nonlinearities a method may replace. Frozen and hashable.

  Attributes:
    relu: `x -> relu(x)`; the default `jax.nn.relu` has gradient 0 at 0 like
      torch (`jnp.maximum(x, 0)` would give 0.5).
    leaky_relu: `(x, negative_slope) -> leaky_relu(x)`.
    max_pool: `(x, *, window, stride, padding) -> pooled`, see `max_pool`.
  """
  relu: Callable[[Array], Array] = jax.nn.relu
  leaky_relu: Callable[[Array, float], Array] = jax.nn.leaky_relu
  max_pool: Callable[..., Array] = max_pool


DEFAULT_OPS = Ops()


# Records site names in call order while a model is traced (see _recording).
_RECORDER = threading.local()


@contextlib.contextmanager
def _recording():
  """Collects `(kind, full_name)` of every tap hit during the enclosed call."""
  stack = getattr(_RECORDER, "stack", None)
  if stack is None:
    stack = _RECORDER.stack = []
  names: list[tuple[str, str]] = []
  stack.append(names)
  try:
    yield names
  finally:
    stack.pop()


def _record(module: nn.Module, kind: str, name: str) -> None:
  stack = getattr(_RECORDER, "stack", None)
  if stack:
    stack[-1].append((kind, "/".join(tuple(module.scope.path) + (name,))))


def _overwrite(_, new):
  return new


def activation(module: nn.Module, name: str, x: Array) -> Array:
  """Marks `x` as the named hidden activation (call inside `@nn.compact`).

  Args:
    module: the calling module (`self`).
    name: site name, unique within `module` and different from its
      submodules' names.
    x: `float[N, ...]` activation.

  Returns:
    `x` plus the zero probe `"activation_probes"/name` when one is provided.
  """
  if module.is_initializing():
    return x
  _record(module, ACTIVATIONS, name)
  x = module.perturb(name, x, collection=ACTIVATION_PROBES)
  module.sow(ACTIVATIONS, name, x, init_fn=lambda: None, reduce_fn=_overwrite)
  return x


def bias_site(module: nn.Module, name: str, y: Array, bias: Array) -> Array:
  """Marks `y` as a pre-activation output where the effective `bias` enters.

  Args:
    module: the calling module (`self`).
    name: site name, unique within `module`.
    y: `float[N, ..., C]` layer output (bias already included).
    bias: `float32[C]` effective bias (see the module docstring).

  Returns:
    `y` plus the zero probe `"bias_probes"/name` when one is provided.
  """
  if module.is_initializing():
    return y
  _record(module, BIASES, name)
  bias = jnp.asarray(bias)
  bias = bias.astype(jnp.promote_types(bias.dtype, jnp.float32))
  module.sow(BIASES, name, bias, init_fn=lambda: None, reduce_fn=_overwrite)
  return module.perturb(name, y, collection=BIAS_PROBES)


def check_contract(model: Any, method: str) -> None:
  """Raises unless `model` is an `xai_jax.models` contract model.

  Methods that read named activations or bias sites, or replace nonlinearities
  (`with_ops`), need a flax Module with an `ops` field; a plain apply
  function is not enough.

  Args:
    model: what the explainer received as its model.
    method: the explainer's name, for the message.

  Raises:
    ValueError: naming `method` and the type received.
  """
  if not isinstance(model, nn.Module) or not hasattr(model, "ops"):
    raise ValueError(
        f"{method} needs an xai_jax.models contract model (a flax Module with an `ops` "
        f"field that marks its activations and bias sites and lets explainers replace its "
        f"nonlinearities, see xai_jax.models.taps); got {type(model).__name__}")


def with_ops(model: nn.Module, ops: Ops) -> nn.Module:
  """Returns `model` with its ReLU / LeakyReLU / max-pool functions replaced.

  Args:
    model: an `xai_jax.models` network (a Flax module with an `ops` field).
    ops: the replacement `Ops`.

  Returns:
    `model.clone(ops=ops)`; it uses the same variables.

  Raises:
    ValueError: if `ops` is not an `Ops` or `model` has no `ops` field.
  """
  if not isinstance(ops, Ops):
    raise ValueError(f"ops must be a taps.Ops, got {type(ops).__name__}")
  if not hasattr(model, "ops"):
    raise ValueError(
        f"{type(model).__name__} has no `ops` field; it does not implement the "
        "xai_jax.models.taps contract")
  return model.clone(ops=ops)


def _model_variables(variables: Any) -> dict:
  """`variables` without tap collections (so stale probes never leak in)."""
  return {k: v for k, v in dict(variables).items() if k not in _TAP_COLLECTIONS}


def _flat(tree: Any) -> dict[str, Array]:
  if not tree:
    return {}
  return traverse_util.flatten_dict(dict(tree), sep="/")


def _ordered(flat: dict[str, Array], order: list[str]) -> dict[str, Array]:
  return {name: flat[name] for name in order if name in flat}


def _names(records: list[tuple[str, str]], kind: str) -> list[str]:
  seen: dict[str, None] = {}
  for k, name in records:
    if k == kind:
      seen.setdefault(name, None)
  return list(seen)


def forward(model: nn.Module, variables: Any, x: Array, *,
            train: bool = False, rngs: Any = None
            ) -> tuple[Array, dict[str, Array]]:
  """Runs the model and returns its logits and every named activation.

  Args:
    model: an `xai_jax.models` network.
    variables: its Flax variables (`{"params", ["batch_stats"]}`).
    x: `float32[N, H, W, C]`.
    train: train mode (dropout needs `rngs={"dropout": key}`; batch-norm
      statistics are used but their update is discarded).
    rngs: optional Flax rngs for train mode.

  Returns:
    `(logits float32[N, K], {name: float[N, h, w, c] or float[N, c]})`, the
    dict in forward order.
  """
  mutable = [ACTIVATIONS] + (["batch_stats"] if train else [])
  with _recording() as records:
    logits, state = model.apply(_model_variables(variables), x, train=train,
                                mutable=mutable, rngs=rngs)
  acts = _ordered(_flat(state.get(ACTIVATIONS, {})), _names(records, ACTIVATIONS))
  return logits, acts


@shape_cached
def _trace_sites(model, variables, x):
  """Shapes of all probes plus site names in forward order (no FLOPs; cached per shapes)."""
  with _recording() as records:
    _, state = jax.eval_shape(
        lambda v, x: model.apply(v, x, mutable=[ACTIVATION_PROBES, BIAS_PROBES]),
        _model_variables(variables), x)
  return state, tuple(records)


def activation_names(model: nn.Module, variables: Any, x: Array) -> tuple[str, ...]:
  """Names of all activation sites in forward order (traced, no FLOPs).

  Args:
    model: an `xai_jax.models` network.
    variables: its variables.
    x: an example input `float32[N, H, W, C]` (or a `jax.ShapeDtypeStruct`).

  Returns:
    Tuple of flat names.
  """
  _, records = _trace_sites(model, variables, x)
  return tuple(_names(records, ACTIVATIONS))


def bias_site_names(model: nn.Module, variables: Any, x: Array) -> tuple[str, ...]:
  """Names of all bias sites in forward order (traced, no FLOPs).

  Args:
    model: an `xai_jax.models` network.
    variables: its variables.
    x: an example input `float32[N, H, W, C]` (or a `jax.ShapeDtypeStruct`).

  Returns:
    Tuple of flat names.
  """
  _, records = _trace_sites(model, variables, x)
  return tuple(_names(records, BIASES))


class TapGradients(NamedTuple):
  """Everything `tap_gradients` returns (dicts keyed by flat site names).

  Attributes:
    logits: `float32[N, K]`.
    input_grad: `float32[N, H, W, C]`, d/dx of `sum_n logits[n, target[n]]`.
    activations: name -> `float[N, h, w, c]` (or `[N, c]`).
    activation_grads: name -> gradient of the score w.r.t. that activation.
    bias_grads: name -> gradient of the score w.r.t. that bias-site output.
    biases: name -> effective bias `float32[c]`.
  """
  logits: Array
  input_grad: Array
  activations: dict[str, Array]
  activation_grads: dict[str, Array]
  bias_grads: dict[str, Array]
  biases: dict[str, Array]


def _check_target(target: Any, n: int) -> Array:
  target = jnp.asarray(target)
  if target.ndim == 0:
    target = jnp.broadcast_to(target, (n,))
  if target.shape != (n,):
    raise ValueError(
        f"target must be a scalar or int[{n}] (one class per example), got "
        f"shape {target.shape}")
  if not jnp.issubdtype(target.dtype, jnp.integer):
    raise ValueError(f"target must be integer class indices, got {target.dtype}")
  return target


def tap_gradients(model: nn.Module, variables: Any, x: Array, target: Any, *,
                  ops: Ops | None = None) -> TapGradients:
  """Input, activation and bias-site gradients of the target logits, one pass.

  The score is `sum_n logits[n, target[n]]` (raw logits, eval mode). One
  `jax.vjp` over `(x, activation probes, bias probes)` gives all gradients.

  Args:
    model: an `xai_jax.models` network.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]` class per example (or a scalar for all).
    ops: optional replacement nonlinearities (e.g. a guided ReLU); applied via
      `with_ops`.

  Returns:
    A `TapGradients`.

  Raises:
    ValueError: if `x` is not 4-D or `target` has the wrong shape.
  """
  if ops is not None:
    model = with_ops(model, ops)
  x = jnp.asarray(x)
  if x.ndim < 2:
    raise ValueError(f"x must be batched [N, ...], got shape {x.shape}")
  target = _check_target(target, x.shape[0])
  base = _model_variables(variables)
  shapes, records = _trace_sites(model, base, x)
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  act_probes = zeros.get(ACTIVATION_PROBES, {})
  bias_probes = zeros.get(BIAS_PROBES, {})

  def score(x, act_probes, bias_probes):
    logits, state = model.apply(
        {**base, ACTIVATION_PROBES: act_probes, BIAS_PROBES: bias_probes}, x,
        mutable=[ACTIVATIONS, BIASES])
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    picked = jnp.take_along_axis(logits, target[:, None], axis=1)
    return jnp.sum(picked), (logits, state)

  (_, (logits, state)), grads = jax.value_and_grad(
      score, argnums=(0, 1, 2), has_aux=True)(x, act_probes, bias_probes)
  input_grad, act_grads, bias_grads = grads
  act_order = _names(records, ACTIVATIONS)
  bias_order = _names(records, BIASES)
  return TapGradients(
      logits=logits,
      input_grad=input_grad,
      activations=_ordered(_flat(state.get(ACTIVATIONS, {})), act_order),
      activation_grads=_ordered(_flat(act_grads), act_order),
      bias_grads=_ordered(_flat(bias_grads), bias_order),
      biases=_ordered(_flat(state.get(BIASES, {})), bias_order))


# ---------------------------------------------------------------------------
# Linear layers (item 4 of the module docstring).
# ---------------------------------------------------------------------------

LINEAR_KINDS = ("conv", "dense", "batch_norm")


class LinearCall(NamedTuple):
  """One call of a linear layer, as a `linear_layer_rule` sees it.

  Attributes:
    name: the layer's module path joined with "/" (e.g. `"features_0"`,
      `"layer1_0/conv1"`); its bias site, if any, is `name + "/bias"`.
    kind: "conv", "dense" or "batch_norm".
    params: the layer's own parameters: `{"kernel"[, "bias"]}` or
      `{"scale", "bias"}`.
    inputs: `float[N, ...]`, the layer's input.
    output: `float[N, ..., C]`, its ordinary output (including the bias-site
      probe, if any).
    apply: `params -> output`: the same layer evaluated on `inputs` with other
      parameters of the same shapes (other variables, e.g. batch-norm
      statistics, unchanged; taps are not marked).
  """
  name: str
  kind: str
  params: dict[str, Array]
  inputs: Array
  output: Array
  apply: Callable[[dict[str, Array]], Array]


def _own_params(module: nn.Module) -> dict[str, Array]:
  params = module.variables.get("params", {}) if module.scope is not None else {}
  return {k: v for k, v in params.items() if not isinstance(v, dict) and hasattr(v, "shape")}


def _linear_kind(name: str, own: dict[str, Array], args: tuple) -> str:
  inputs = args[0] if args else None
  shape = getattr(inputs, "shape", None)
  kernel = own.get("kernel")
  if shape is not None and set(own) in ({"kernel"}, {"kernel", "bias"}):
    if kernel.ndim == 4 and len(shape) == 4 and shape[-1] == kernel.shape[2]:
      return "conv"
    if kernel.ndim == 2 and len(shape) == 2 and shape[-1] == kernel.shape[0]:
      return "dense"
  if (shape is not None and set(own) == {"scale", "bias"} and own["scale"].ndim == 1
      and shape[-1] == own["scale"].shape[0]):
    return "batch_norm"
  params = {k: tuple(v.shape) for k, v in sorted(own.items())}
  raise ValueError(
      f"module {name or '<root>'!r} owns parameters {params} and is called on an input of "
      f"shape {shape}, but it is not a conv, dense or batch-norm layer of the taps contract "
      f"(item 4 of xai_jax.models.taps: modules that own parameters must be such layers)")


@contextlib.contextmanager
def linear_layer_rule(rule: Callable[[LinearCall], Array]):
  """Within the context, every linear layer's output is replaced by `rule(call)`.

  Active while a contract model is applied (also under `jit`, `vmap` and
  `grad`, as the model is traced). `rule` receives a `LinearCall` and returns
  the array to use as the layer's output, typically `call.output` with a
  modified gradient. Re-evaluations through `call.apply` are not intercepted.
  Implemented with `flax.linen.intercept_methods`.

  Args:
    rule: `LinearCall -> float[N, ..., C]` of the output's shape.

  Raises:
    ValueError: (when the model is applied) for a module that owns parameters
      but is not a conv, dense or batch-norm layer.
  """
  busy = False

  def intercept(next_fun, args, kwargs, context):
    nonlocal busy
    module = context.module
    if busy or context.method_name != "__call__":
      return next_fun(*args, **kwargs)
    own = _own_params(module)
    if not own:
      return next_fun(*args, **kwargs)
    name = "/".join(module.path)
    kind = _linear_kind(name, own, args)
    output = next_fun(*args, **kwargs)
    others = {c: v for c, v in module.variables.items()
              if c != "params" and c not in _TAP_COLLECTIONS}

    def apply(params):
      nonlocal busy
      busy = True
      try:
        return module.clone(parent=None).apply({**others, "params": params}, *args, **kwargs)
      finally:
        busy = False

    return rule(LinearCall(name, kind, own, args[0], output, apply))

  with nn.intercept_methods(intercept):
    yield


@shape_cached
def linear_layers(model: nn.Module, variables: Any, x: Array) -> tuple[tuple[str, str], ...]:
  """`(name, kind)` of every linear layer call in forward order (traced, no FLOPs; cached).

  Args:
    model: an `xai_jax.models` network.
    variables: its variables.
    x: an example input `float32[N, H, W, C]` (or a `jax.ShapeDtypeStruct`).

  Returns:
    Tuple of `(name, kind)`, kind in `LINEAR_KINDS`.

  Raises:
    ValueError: for a module that owns parameters but is not a linear layer.
  """
  calls: list[tuple[str, str]] = []

  def record(call: LinearCall) -> Array:
    calls.append((call.name, call.kind))
    return call.output

  def run(v, x):
    with linear_layer_rule(record):
      return model.apply(v, x)

  jax.eval_shape(run, _model_variables(variables), x)
  return tuple(calls)


def default_gradcam_layer(model: nn.Module) -> str:
  """Name of the model's default Grad-CAM activation (last conv block output).

  Raises:
    ValueError: if the model declares none (e.g. the MLP).
  """
  name = getattr(model, "gradcam_layer", None)
  if not name:
    raise ValueError(
        f"{type(model).__name__} has no default Grad-CAM layer (no conv block)")
  return name


__all__ = [
    "ACTIVATIONS", "ACTIVATION_PROBES", "BIASES", "BIAS_PROBES",
    "DEFAULT_OPS", "LINEAR_KINDS", "LinearCall", "Ops", "TapGradients", "activation",
    "activation_names", "bias_site", "bias_site_names", "check_contract",
    "default_gradcam_layer", "forward",
    "linear_layer_rule", "linear_layers", "max_pool", "tap_gradients", "with_ops",
]
