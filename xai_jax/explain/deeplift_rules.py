"""DeepLift (rescale rule, max-pool rule) and DeepLiftShap on contract models.

Shrikumar, Greenside & Kundaje, "Learning Important Features Through
Propagating Activation Differences" (ICML 2017), https://arxiv.org/abs/1704.02685;
Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions"
(NeurIPS 2017) for DeepLiftShap. Semantics follow Captum 0.9
(reference-semantics.md A.4, A.5).

How it runs (Captum's recipe in JAX): the network is applied once to the
stacked batch `concat([x, x_ref])` (2N rows) with its ReLU / LeakyReLU /
max-pool replaced (`taps.with_ops`) by `jax.custom_vjp` ops whose backward
pass applies the DeepLift rule to the two halves; convolutions, dense layers,
eval batch norm, average pooling, additions and flattening keep their ordinary
gradients (for linear maps the multiplier is the gradient). The gradient of
`sum_n logits[n, t_n]` over BOTH halves with respect to the `x` half is the
multiplier `m`, and the attribution is `(x - x_ref) * m`.

Rules (for each op, Δ = value on the `x` half minus value on the reference half):
  * rescale (ReLU, LeakyReLU): `g_in = g_out * Δy / Δx`; where `|Δx| < eps`
    each half falls back to its own ordinary gradient `f'(u) * g_out`.
  * max-pool: with `m = max(o, o_ref)`, the `x` half's `g_out * (m - o_ref)` is
    scattered to the argmax of `x`'s windows and the reference half's
    `g_out * (o - m)` to the argmax of the reference windows (first maximum
    in row-major window order, `-inf` padding); both are summed and divided by
    `Δin`, the same multiplier for both halves; where `|Δin| < eps`, the
    ordinary max-pool gradient.

By default the chain rule is exact: every op receives its downstream op's
DeepLift multiplier, overlapping pooling windows that share an argmax add
their contributions, and the attributions of a piecewise-linear network
(ReLU, LeakyReLU, max-pool, conv, dense, eval BN, average pool, residual
additions) sum to `f_t(x) - f_t(x_ref)` up to float rounding.

`captum_compat=True` reproduces three documented behaviours of Captum 0.9
(reference-semantics A.4):
  (a) chained hooks: when a hooked op's output is directly the input of
      another hooked op (ReLU -> MaxPool in VGG, AlexNet and the ResNet stem;
      MaxPool -> ReLU), the upstream rule receives the downstream op's
      ORDINARY gradient as `g_out`, while its `|Δ| < eps` fallback branch
      receives the downstream DeepLift gradient;
  (b) the max-pool fallback uses the ordinary gradient of example 0 of the
      doubled batch, broadcast to every row (captum issue #1276); so a
      traced out-of-range target of image 0, whose gradient is NaN (see
      `xai_jax.explain.common`), also spreads NaN to other images' fallback
      positions;
  (c) the max-pool scatter is `F.max_unpool2d`, which WRITES rather than adds,
      so where overlapping windows share an argmax only the last window in
      row-major order counts (AlexNet's and ResNet's 3x3/2 pools; torch's CPU
      kernel, its CUDA kernel picks an arbitrary window).
Chains are detected as Captum sees them, by identity of the array flowing
from one op into the next (the contract's `taps.activation` is a no-op when no
probes are passed, so `relu -> activation -> max_pool` is a direct chain, as
`nn.ReLU -> nn.MaxPool2d` is in torchvision); no contract extension is
needed. An op output that feeds both a hooked op and other layers is treated
as two paths (none of the contract models does this). With (b) examples are
no longer independent. Captum's softmax rule has no counterpart: contract
models end in raw logits.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from xai_jax import xla
from xai_jax.explain import common, sampling
from xai_jax.models import pooling, taps

Array = jax.Array

_TAP_COLLECTIONS = (taps.ACTIVATIONS, taps.ACTIVATION_PROBES, taps.BIASES, taps.BIAS_PROBES)


# ---------------------------------------------------------------------------
# Op specifications and their forward passes.
# ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Rescale:
  """ReLU (`slope=0`) or LeakyReLU(`slope`), torch semantics (derivative at 0 is `slope`)."""
  slope: float


@dataclasses.dataclass(frozen=True)
class _Pool:
  """torch `MaxPool2d(window, stride, padding)`, floor mode, `-inf` padding."""
  window: int
  stride: int
  padding: int


def _geometry(spec: _Pool) -> dict:
  return dict(window=spec.window, stride=spec.stride, padding=spec.padding)


def _unpool(values: Array, argmax: Array, spec: _Pool, h: int, w: int, *, mode: str) -> Array:
  """Scatters per-window `values [B, Ho, Wo, C]` to each window's argmax in `[B, h, w, C]`.

  mode "add" accumulates windows that share an argmax (the max-pool VJP);
  mode "last" keeps only the last such window in row-major order, like torch's
  `F.max_unpool2d` on CPU.
  """
  if mode == "add" or pooling.is_tiling(**_geometry(spec)):  # tiles never share a position
    return pooling.scatter_to_windows(values, argmax, height=h, width=w, **_geometry(spec))
  k = spec.window
  offsets = [(di, dj) for di in range(k) for dj in range(k)]
  place = functools.partial(pooling.place_window_offset, stride=spec.stride,
                            padding=spec.padding, height=h, width=w)
  placed = [place(jnp.where(argmax == i, values, 0), di, dj)
            for i, (di, dj) in enumerate(offsets)]
  ho, wo = values.shape[1], values.shape[2]
  rank = (jnp.arange(ho * wo, dtype=jnp.int32).reshape(1, ho, wo, 1) + 1)
  claims = [place(jnp.where(argmax == i, rank, 0), di, dj)
            for i, (di, dj) in enumerate(offsets)]
  winner = functools.reduce(jnp.maximum, claims)
  out = jnp.zeros_like(placed[0])
  for claim, value in zip(claims, placed):
    out = out + jnp.where((claim == winner) & (winner > 0), value, 0)
  return out


def _forward(spec, u: Array) -> tuple[Array, Any]:
  """Output of one op and what its backward pass needs besides input/output."""
  if isinstance(spec, _Rescale):
    return jnp.where(u > 0, u, spec.slope * u), None
  argmax = pooling.window_argmax(u, **_geometry(spec))  # first maximum, like torch
  return pooling.select_window_element(u, argmax, **_geometry(spec)), argmax


def _halves_diff(a: Array) -> Array:
  """`concat([a_x - a_ref] * 2)` for a stacked `[2N, ...]` array."""
  n = a.shape[0] // 2
  d = a[:n] - a[n:]
  return jnp.concatenate([d, d], axis=0)


def _ordinary_vjp(spec, u: Array, aux: Any, g: Array) -> Array:
  """Ordinary (autograd) input gradient of one op, per row."""
  if isinstance(spec, _Rescale):
    return g * jnp.where(u > 0, 1.0, spec.slope).astype(g.dtype)
  return _unpool(g, aux, spec, u.shape[1], u.shape[2], mode="add")


def _rule(spec, u: Array, y: Array, aux: Any, grad_input: Array, grad_output: Array,
          *, eps: float, compat: bool) -> Array:
  """DeepLift input gradient of one op (Captum's `nonlinear` / `maxpool`).

  Args:
    spec: the op.
    u, y: stacked input / output `[2N, ...]`.
    aux: the pooling argmax (None for rescale ops).
    grad_input: ordinary input gradient of the op (used by the `|Δ| < eps` branch).
    grad_output: output gradient that multiplies the rescaled differences.
    eps: threshold on `|Δin|`.
    compat: Captum's max-pool fallback (example 0) and write-not-add scatter.
  """
  delta_in = _halves_diff(u)
  small = jnp.abs(delta_in) < eps
  safe_delta = jnp.where(small, jnp.ones_like(delta_in), delta_in)
  if isinstance(spec, _Rescale):
    return jnp.where(small, grad_input, grad_output * _halves_diff(y) / safe_delta)
  n = u.shape[0] // 2
  o, o_ref = y[:n], y[n:]
  top = jnp.maximum(o, o_ref)
  delta_out = jnp.concatenate([top - o_ref, o - top], axis=0)
  scattered = _unpool(grad_output * delta_out, aux, spec, u.shape[1], u.shape[2],
                      mode="last" if compat else "add")
  scattered = scattered[:n] + scattered[n:]
  scattered = jnp.concatenate([scattered, scattered], axis=0)
  fallback = jnp.broadcast_to(grad_input[:1], grad_input.shape) if compat else grad_input
  return jnp.where(small, fallback, scattered / safe_delta)


@functools.lru_cache(maxsize=None)
def _chain(specs: tuple, eps: float, compat: bool):
  """A `custom_vjp` function applying the ops `specs` in sequence with DeepLift rules.

  A chain of one op is the plain rule. Longer chains (compat mode only) are
  directly connected hooked ops with Captum's hook order: going backwards,
  op i's rule gets as `grad_output` the gradient recorded at its output
  BEFORE op i+1's rule replaced it (the ordinary gradient of op i+1), and as
  `grad_input` the ordinary VJP of the replaced gradient.
  """

  def run(u):
    inputs, outputs, auxes = [], [], []
    for spec in specs:
      y, aux = _forward(spec, u)
      inputs.append(u)
      outputs.append(y)
      auxes.append(aux)
      u = y
    return u, (tuple(inputs), tuple(outputs), tuple(auxes))

  @jax.custom_vjp
  def chain(u):
    return run(u)[0]

  def bwd(res, g):
    inputs, outputs, auxes = res
    replaced, recorded = g, g
    for i in reversed(range(len(specs))):
      ordinary = _ordinary_vjp(specs[i], inputs[i], auxes[i], replaced)
      replaced = _rule(specs[i], inputs[i], outputs[i], auxes[i], ordinary, recorded,
                       eps=eps, compat=compat)
      recorded = ordinary
    return (replaced,)

  chain.defvjp(run, bwd)
  return chain


class _DeepLiftOps:
  """Builds the `taps.Ops` of one DeepLift trace (fresh per call).

  In compat mode it remembers which array each op produced, so that an op
  whose input is another op's output is fused with it into one chain.
  """

  def __init__(self, *, eps: float, compat: bool):
    self._eps = eps
    self._compat = compat
    self._produced: dict[int, tuple[Array, Array, tuple]] = {}

  def _apply(self, spec, u: Array) -> Array:
    if u.ndim < 1 or u.shape[0] % 2:
      raise ValueError(f"DeepLift ops expect a stacked [2N, ...] batch; got shape {u.shape}")
    specs, source = (spec,), u
    if self._compat:
      hit = self._produced.get(id(u))
      if hit is not None and hit[0] is u:
        source, specs = hit[1], hit[2] + (spec,)
    out = _chain(specs, self._eps, self._compat)(source)
    if self._compat:
      self._produced[id(out)] = (out, source, specs)
    return out

  def relu(self, u: Array) -> Array:
    return self._apply(_Rescale(0.0), u)

  def leaky_relu(self, u: Array, negative_slope: float = 0.01) -> Array:
    return self._apply(_Rescale(float(negative_slope)), u)

  def max_pool(self, u: Array, *, window: int, stride: int, padding: int = 0) -> Array:
    if u.ndim != 4:
      raise ValueError(f"max_pool expects NHWC input, got shape {u.shape}")
    return self._apply(_Pool(int(window), int(stride), int(padding)), u)

  def ops(self) -> taps.Ops:
    return taps.Ops(relu=self.relu, leaky_relu=self.leaky_relu, max_pool=self.max_pool)


# ---------------------------------------------------------------------------
# Public functions.
# ---------------------------------------------------------------------------


def _check_eps(eps) -> float:
  eps = float(eps)
  if not eps > 0:
    raise ValueError(f"eps must be a positive float; got {eps}")
  return eps


def _model_variables(variables) -> dict:
  return {k: v for k, v in dict(variables).items() if k not in _TAP_COLLECTIONS}


def deeplift_multipliers(model: nn.Module, variables: Any, x: Array, baseline: Array,
                         target: Array, *, captum_compat: bool = False,
                         eps: float = 1e-10) -> tuple[Array, Array]:
  """DeepLift multipliers and target logits of both halves (plain JAX, jit/vmap friendly).

  Args:
    model: contract model.
    variables: its variables.
    x: `float[N, H, W, C]`.
    baseline: `float[N, H, W, C]`.
    target: `int32[N]`.
    captum_compat: see the module docstring.
    eps: `|Δ|` threshold of the fallback branches.

  Returns:
    `(multipliers float[N, H, W, C], target_logits float32[2, N])` with the
    target logits of `x` (row 0) and of `baseline` (row 1).
  """
  tracker = _DeepLiftOps(eps=eps, compat=captum_compat)
  dl_model = taps.with_ops(model, tracker.ops())
  plain = _model_variables(variables)
  n = x.shape[0]
  both_targets = jnp.concatenate([target, target])

  def score(x_half):
    logits = dl_model.apply(plain, jnp.concatenate([x_half, baseline], axis=0))
    picked = common.pick_target(logits, both_targets)
    return jnp.sum(picked), picked

  multipliers, picked = jax.grad(score, has_aux=True)(x)
  return multipliers, picked.reshape(2, n)


@functools.partial(xla.jit, static_argnames=("model", "captum_compat", "eps"))
def _deeplift(model, variables, x, baseline, target, *, captum_compat, eps):
  multipliers, picked = deeplift_multipliers(
      model, variables, x, baseline, target, captum_compat=captum_compat, eps=eps)
  attributions = (x - baseline) * multipliers
  axes = tuple(range(1, x.ndim))
  delta = jnp.sum(attributions, axis=axes) - (picked[0] - picked[1]).astype(attributions.dtype)
  return attributions, delta


def deeplift(model: nn.Module, variables: Any, x: Array, target: Array | int | None, *,
             baseline: Array | float | None = None, captum_compat: bool = False,
             eps: float = 1e-10, return_delta: bool = False):
  """DeepLift attributions with the rescale and max-pool rules.

  Args:
    model: an `xai_jax.models` contract model (its ReLU / LeakyReLU /
      max-pool are replaced; a plain apply function is not accepted).
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]` class per image, an int for all, or None for the
      predicted class.
    baseline: reference input broadcastable to `x` (scalar, `[1, H, W, C]` or
      `[N, H, W, C]`); default zeros.
    captum_compat: reproduce Captum 0.9's chained-hook, example-0 fallback and
      unpool behaviours (module docstring); default is the exact chain rule.
    eps: `|Δ|` below which a rule falls back to the ordinary gradient
      (Captum's `eps`, 1e-10).
    return_delta: also return the convergence delta.

  Returns:
    `float[N, H, W, C]` attributions `(x - baseline) * multipliers`; with
    `return_delta` a pair `(attributions, delta float[N])`, where
    `delta = sum(attributions) - (f_t(x) - f_t(baseline))` per image (~0 by
    default, up to float rounding). Both are NaN for an image whose traced
    target is out of range (see `xai_jax.explain.common`).

  Raises:
    ValueError: for a non-contract model, a bad `x`, `target`, `baseline` or
      `eps`, or variables / channels that do not fit the model.
  """
  taps.check_contract(model, "deeplift")
  eps = _check_eps(eps)
  x, target, valid = common.prepare(model, variables, x, target)
  baseline = common.check_like(baseline, x, "baseline")
  attributions, delta = _deeplift(model, variables, x, baseline, target,
                                  captum_compat=bool(captum_compat), eps=eps)
  return common.nan_where_invalid((attributions, delta) if return_delta else attributions,
                                  valid)


def deeplift_shap(model: nn.Module, variables: Any, x: Array, target: Array | int | None, *,
                  baselines: Array, captum_compat: bool = False, eps: float = 1e-10,
                  chunk: int | None = None, return_delta: bool = False):
  """DeepLiftShap: DeepLift averaged (unweighted) over a set of baselines.

  Every image is paired with every baseline (Captum's order: pair
  `i * B_ref + j` is image i with baseline j). DeepLift is run on the pairs
  `chunk` baselines at a time (a Python loop over jitted calls, like the other
  chunked methods on CPU), so at most `2 * N * chunk` rows go through the
  model at once.

  Args:
    model: contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.
    baselines: `float[B_ref, H, W, C]` with `B_ref > 1` (as Captum requires), or
      `float[N, B_ref, H, W, C]`, one set per image.
    captum_compat: as in `deeplift`. Captum runs all `N * B_ref` pairs in one
      batch, so its example-0 fallback (which only matters where some
      `|Δ| < eps`) uses pair (0, 0) for all; this is reproduced exactly only
      when `chunk >= B_ref`.
    eps: as in `deeplift`.
    chunk: baselines per model call (`2 * N * chunk` rows); None picks
      `common.default_chunk` (about `common.DEFAULT_PIXELS_PER_CHUNK` input
      pixels per call, all baselines at once for small images).
    return_delta: also return per-pair convergence deltas.

  Returns:
    `float[N, H, W, C]` mean attributions; with `return_delta`,
    `(attributions, delta float[N, B_ref])` (`delta.reshape(-1)` is Captum's
    order). NaN for an image whose traced target is out of range.

  Raises:
    ValueError: for a non-contract model, bad shapes (also variables or
      channels that do not fit the model), a single baseline or a bad chunk.
  """
  taps.check_contract(model, "deeplift_shap")
  eps = _check_eps(eps)
  x, target, valid = common.prepare(model, variables, x, target)
  baselines = sampling.check_references(baselines, x, name="baselines", per_image=True)
  per_image = baselines.ndim == x.ndim + 1
  num_ref = baselines.shape[int(per_image)]
  if num_ref < 2:
    raise ValueError("deeplift_shap needs more than one baseline (as Captum's DeepLiftShap); "
                     f"got {num_ref}; use deeplift for a single baseline")
  # Each pair is two rows (image and baseline) of the stacked DeepLift batch.
  chunk = common.resolve_chunk(chunk, num_ref, (2 * x.shape[0],) + x.shape[1:])
  n = x.shape[0]
  total, deltas = None, []
  for lo in range(0, num_ref, chunk):
    refs = baselines[:, lo:lo + chunk] if per_image else baselines[lo:lo + chunk]
    k = refs.shape[int(per_image)]
    xs = jnp.repeat(x, k, axis=0)
    bs = (refs.reshape((n * k,) + x.shape[1:]) if per_image
          else jnp.tile(refs, (n, 1, 1, 1)))
    ts = jnp.repeat(target, k)
    attributions, delta = _deeplift(model, variables, xs, bs, ts,
                                    captum_compat=bool(captum_compat), eps=eps)
    part = jnp.sum(attributions.reshape((n, k) + x.shape[1:]), axis=1)
    total = part if total is None else total + part
    deltas.append(delta.reshape(n, k))
  mean = total / num_ref
  if return_delta:
    return common.nan_where_invalid((mean, jnp.concatenate(deltas, axis=1)), valid)
  return common.nan_where_invalid(mean, valid)
