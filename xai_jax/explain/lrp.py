"""Layer-wise relevance propagation (LRP) with Captum 0.9's rules, on any contract model.

Bach et al., "On Pixel-Wise Explanations for Non-Linear Classifier Decisions by
Layer-Wise Relevance Propagation" (PLoS ONE 2015),
https://doi.org/10.1371/journal.pone.0130140; Montavon et al., "Layer-Wise
Relevance Propagation: An Overview" (2019) for the gamma and z+ rules; Ancona
et al., "Towards better understanding of gradient-based attribution methods
for deep neural networks" (ICLR 2018), https://arxiv.org/abs/1711.06104, for
epsilon-LRP as a modified gradient.

The relevance of the target logit, `R = logit_t`, is propagated from the
output to the input. A linear layer (conv, dense or eval batch norm, item 4 of
`xai_jax.models.taps`) with input `a`, output `z` and the rule's modified
weights `w'` and output `z' = a w' + b'` passes

    R_i = a_i * sum_j w'_ij * R_j / (z'_j + epsilon * sign(z'_j)),   sign(0) = 1,

and the input relevance is the returned attribution. Rules for conv and dense
layers (Captum's `EpsilonRule`, `GammaRule`, `Alpha1_Beta0_Rule`):
  * "epsilon": `w' = w`, `b' = b` (the default everywhere, Captum's default);
  * "gamma": `w' = w + gamma * max(w, 0)`, `b' = b` (`gamma=0.25` as Captum);
  * "alpha1_beta0": `w' = max(w, 0)`, `b' = b` (Captum's Alpha1_Beta0_Rule;
    equal to the alpha=1, beta=0 rule of Bach et al. for non-negative inputs);
  * "zplus": `w' = max(w, 0)`, `b' = 0` (the z+ rule of Montavon et al., i.e.
    Captum's `Alpha1_Beta0_Rule(set_bias_to_zero=True)`).
`zero_bias=True` sets `b' = 0` for "gamma" and "alpha1_beta0" too (Captum's
`set_bias_to_zero`). Batch norm always uses the epsilon rule (Captum's default
for `BatchNorm2d`; its docs warn that Alpha1_Beta0 does not fit batch norm).
`layer_rules` chooses another rule per conv/dense layer (e.g. gamma for the
lower layers, epsilon for the middle ones, as Montavon et al. recommend).
Biases and `epsilon` absorb relevance, so `sum(R_input) = logit_t` only
without biases (and up to epsilon).

Layers without parameters follow Captum: ReLU (and LeakyReLU, which Captum
rejects) pass relevance unchanged; max-pooling gives a window's relevance to
its (first) maximum; average pooling, additions (ResNet's skip connections,
Captum's `Addition_Module` rule) and concatenations split it in proportion to
each input's contribution; dropout (eval) is the identity. Captum applies its
epsilon rule with epsilon = 1e-9 to pooling and `Addition_Module` layers, which
is this proportional split up to 1e-9; here `epsilon` acts on conv, dense and
batch-norm layers only (measured on a random-weight VGG11 at 32x32, whose
activations are ~1e-3, Captum's default differs from this by 7e-6 relative).
ResNets are supported by that principled addition rule. Captum needs its
`Addition_Module` in place of torchvision's `out += identity`: on an
unmodified torchvision ResNet18 (random weights, no biases) its relevance sums
to -8.7e9 for a logit of -0.6, where here it sums to the logit.

How it runs ("LRP as a modified gradient"): with `R = a * g` for every
activation `a`, each rule above is the chain rule with the layer's backward
pass replaced by `g_in = w'^T (g_out * z / (z' + epsilon sign z'))`, and every
parameter-free op above is its ordinary gradient (ReLU, max-pool and sums are
positively homogeneous). `taps.linear_layer_rule` substitutes each linear
layer's output by
`sg(z) + sg(z / (z' + eps sign z')) * (z'(a) - sg(z'(a)))`, `sg` being
`stop_gradient` (value `z`, so every later layer sees the original
activations, pooling winners and ReLU masks), and the attribution is
`x * d logit_t / dx`. One
forward and one backward pass, plus one forward of each modified layer for the
non-epsilon rules. With `epsilon -> 0` and the epsilon rule everywhere, LRP
equals input x gradient (Ancona et al., Proposition 1).
"""

from __future__ import annotations

import functools
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import xla
from xai_jax.explain import common
from xai_jax.models import taps

Array = jax.Array

RULES = ("epsilon", "gamma", "alpha1_beta0", "zplus")
# Captum's PropagationRule.STABILITY_FACTOR (EpsilonRule's default epsilon).
DEFAULT_EPSILON = 1e-9


def _stabilized(z: Array, epsilon: float) -> Array:
  """`z + epsilon * sign(z)` with `sign(0) = 1` (Captum's stabiliser)."""
  return z + jnp.where(z >= 0, epsilon, -epsilon).astype(z.dtype)


def _modified_params(params: dict, rule: str, gamma: float, zero_bias: bool) -> dict:
  kernel = params["kernel"]
  positive = jnp.maximum(kernel, 0)
  out = dict(params)
  out["kernel"] = kernel + gamma * positive if rule == "gamma" else positive
  if "bias" in out and (zero_bias or rule == "zplus"):
    out["bias"] = jnp.zeros_like(out["bias"])
  return out


def _rule_output(call: taps.LinearCall, *, rules: Mapping[str, str], default: str,
                 epsilon: float, gamma: float, zero_bias: bool) -> Array:
  """The layer output with LRP's backward pass (value: the ordinary output)."""
  z = call.output
  rule = "epsilon" if call.kind == "batch_norm" else rules.get(call.name, default)
  if rule == "epsilon":
    z_rule = z
  else:
    z_rule = call.apply(_modified_params(call.params, rule, gamma, zero_bias)).astype(z.dtype)
  frozen = jax.lax.stop_gradient(z_rule)
  scale = jax.lax.stop_gradient(z / _stabilized(frozen, epsilon))
  return jax.lax.stop_gradient(z) + (z_rule - frozen) * scale


@functools.partial(xla.jit, static_argnames=("model", "rules", "default", "epsilon", "gamma",
                                             "zero_bias"))
def _lrp(model, variables, x, target, *, rules, default, epsilon, gamma, zero_bias):
  rule = functools.partial(_rule_output, rules=dict(rules), default=default, epsilon=epsilon,
                           gamma=gamma, zero_bias=zero_bias)

  def score(x):
    with taps.linear_layer_rule(rule):
      logits = model.apply(variables, x)
    return jnp.sum(common.pick_target(logits, target))

  return x * jax.grad(score)(x)


def _check_rule(rule, what: str) -> str:
  if not isinstance(rule, str) or rule not in RULES:
    raise ValueError(f"unknown {what} {rule!r}; valid: {', '.join(RULES)}")
  return rule


def _check_number(value, name: str, *, positive: bool) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
    raise ValueError(f"{name} must be a Python number (a static option); got {value!r}")
  value = float(value)
  if not (value > 0 if positive else value >= 0) or value == float("inf"):
    raise ValueError(f"{name} must be {'> 0' if positive else '>= 0'} and finite; got {value}")


def check_static_options(options: Mapping[str, Any]) -> None:
  """Checks `lrp`'s options that need no model (`rule`, `epsilon`, `gamma`, `zero_bias`, the
  rules in `layer_rules`); used by `lrp` and by `explain.check_options`.

  Raises:
    ValueError: naming the bad option.
  """
  _check_rule(options.get("rule", "epsilon"), "rule")
  _check_number(options.get("epsilon", DEFAULT_EPSILON), "epsilon", positive=True)
  _check_number(options.get("gamma", 0.25), "gamma", positive=False)
  if not isinstance(options.get("zero_bias", False), bool):
    raise ValueError(f"zero_bias must be a bool; got {options['zero_bias']!r}")
  layer_rules = options.get("layer_rules")
  if layer_rules is not None:
    if not isinstance(layer_rules, Mapping):
      raise ValueError(f"layer_rules must be a mapping {{layer name: rule}}; got {layer_rules!r}")
    for name, layer_rule in layer_rules.items():
      _check_rule(layer_rule, f"rule for layer {name!r}")


def lrp(model: nn.Module, variables: Any, x: Array, target: Array | int | None, *,
        rule: str = "epsilon", epsilon: float = DEFAULT_EPSILON, gamma: float = 0.25,
        zero_bias: bool = False,
        layer_rules: Mapping[str, str] | None = None) -> Array:
  """Layer-wise relevance propagation (Captum `LRP` semantics, see the module docstring).

  Args:
    model: an `xai_jax.models` contract model.
    variables: its variables.
    x: `float32[N, H, W, C]`.
    target: `int[N]`, an int, or None for the predicted class.
    rule: the rule of every conv and dense layer: "epsilon", "gamma",
      "alpha1_beta0" or "zplus". Batch norm always uses "epsilon".
    epsilon: the stabiliser (> 0) of every rule's denominator (Captum: 1e-9
      for all rules; its `EpsilonRule(epsilon)` sets it per layer). A tiny
      value such as 1e-30 gives LRP-0 (a zero output then passes no
      relevance instead of dividing 0 by 0).
    gamma: the gamma rule's weight on positive weights.
    zero_bias: drop the biases of "gamma" and "alpha1_beta0" layers
      (Captum's `set_bias_to_zero`); "zplus" always does.
    layer_rules: optional per-layer rules, `{layer name: rule}`, overriding
      `rule`; names as `taps.linear_layers` (e.g. `{"features_0": "zplus"}`).

  Returns:
    `float32[N, H, W, C]` input relevance (Captum's attribution, i.e. its
    normalised relevance times the target logit); all NaN for an image whose
    traced target is out of range (see `xai_jax.explain.common`).

  Raises:
    ValueError: for a non-contract model, bad `x` / `target`, variables or
      channels that do not fit the model, an unknown rule or layer name, a
      batch-norm layer in `layer_rules`, `epsilon <= 0`, a negative `gamma`, or a
      module that owns parameters but is not a linear layer.
  """
  taps.check_contract(model, "lrp")
  check_static_options(dict(rule=rule, epsilon=epsilon, gamma=gamma, zero_bias=zero_bias,
                            layer_rules=layer_rules))
  x, target, valid = common.prepare(model, variables, x, target)
  kinds = dict(taps.linear_layers(model, variables, x))  # also the contract check
  overrides = ()
  if layer_rules:
    for name, layer_rule in sorted(layer_rules.items()):
      if name not in kinds:
        valid_names = ", ".join(n for n, k in kinds.items() if k != "batch_norm")
        raise ValueError(f"unknown layer {name!r} in layer_rules; conv and dense layers: "
                         f"{valid_names}")
      if kinds[name] == "batch_norm" and layer_rule != "epsilon":
        raise ValueError(f"layer {name!r} is a batch norm, which always uses the epsilon rule")
    overrides = tuple(sorted(layer_rules.items()))
  out = _lrp(model, variables, x, target, rules=overrides, default=rule,
             epsilon=float(epsilon), gamma=float(gamma), zero_bias=zero_bias)
  return common.nan_where_invalid(out, valid)


__all__ = ["DEFAULT_EPSILON", "RULES", "check_static_options", "lrp"]
