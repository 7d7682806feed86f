"""LRP: NumPy layer-by-layer references, Ancona's identity, conservation, Captum parity.

Without torch (float64):
  * TinyNet (conv+bias, ReLU, max-pool, conv, batch norm, ReLU, 2x2 average
    pool, NCHW flatten, dense, ReLU, dense) and ResNet-like ResBlockNet (bias-free
    convs, batch norms, identity addition, global average pool, dense) against
    a plain NumPy relevance propagation written from the rule formulas
    `R_i = a_i sum_j w'_ij R_j / (z'_j + eps sign z'_j)` (no gradients), for
    every rule, per-layer rules, a large epsilon and zero_bias;
  * epsilon-LRP with epsilon -> 0 equals input x gradient on ReLU networks
    (Ancona et al. 2018, Proposition 1; with biases too, since every rule
    factor z / (z + eps) tends to 1);
  * without biases the input relevance sums to the target logit for every rule
    (conservation), on ResNet18 (additions, batch norm) and the small VGG;
  * the contract addition `taps.linear_layer_rule` / `taps.linear_layers`.
With torch (marked torch/parity/slow): Captum 0.9's `LRP` on torchvision VGG11
and VGG11-BN with random weights at 32x32, float64 in both frameworks (max-pool
windows have near-ties, and the epsilon denominators of near-zero outputs
amplify float32 rounding), for every rule Captum has for conv and linear
layers. Captum also applies `EpsilonRule()` (epsilon 1e-9) to its pooling
layers, where xai_jax splits relevance exactly in proportion; on the Captum
side the pooling layers therefore get `EpsilonRule(1e-100)` (measured: the
default 1e-9 changes the random-weight VGG11 relevance by 7e-6 relative, its
activations being ~1e-3).
"""

import importlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import explain, models
from xai_jax.models import layers, taps

import narrow_nets

lrp_module = importlib.import_module("xai_jax.explain.lrp")

K = 4
RNG = np.random.default_rng(0)


class TinyNet(nn.Module):
  """conv-ReLU-maxpool-conv-BN-ReLU-avgpool-dense-ReLU-dense on [N, 8, 8, 2]."""
  num_classes: int = K
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  gradcam_layer = "relu2"

  @nn.compact
  def __call__(self, x, *, train=False):
    z = layers.Conv(4, 3, padding=1, dtype=self.dtype, name="conv1")(x)
    a = taps.activation(self, "relu1", self.ops.relu(z))
    a = self.ops.max_pool(a, window=2, stride=2, padding=0)
    z = layers.Conv(5, 3, padding=1, dtype=self.dtype, name="conv2")(a)
    z = layers.BatchNorm(dtype=self.dtype, name="bn2")(z, train=train)
    a = taps.activation(self, "relu2", self.ops.relu(z))
    n, h, w, c = a.shape
    a = a.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    h = layers.Dense(6, dtype=self.dtype, name="fc1")(layers.flatten_nchw(a))
    h = taps.activation(self, "relu3", self.ops.relu(h))
    return layers.Dense(self.num_classes, dtype=self.dtype, name="fc2")(h)


class ResBlockNet(nn.Module):
  """relu(bn2(conv2(relu(bn1(conv1(x))))) + x), global average pool, dense, on [N, 4, 4, 3]."""
  num_classes: int = K
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  gradcam_layer = "out"

  @nn.compact
  def __call__(self, x, *, train=False):
    conv = lambda name: layers.Conv(3, 3, padding=1, use_bias=False, dtype=self.dtype,
                                    name=name)
    bn = lambda name: layers.BatchNorm(dtype=self.dtype, name=name)
    y = taps.activation(self, "relu1", self.ops.relu(bn("bn1")(conv("conv1")(x), train=train)))
    y = bn("bn2")(conv("conv2")(y), train=train)
    y = taps.activation(self, "out", self.ops.relu(y + x))
    return layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(jnp.mean(y, axis=(1, 2)))


def _variables(model, shape, seed, *, biases=True):
  """Random float64 variables of `model` on inputs of `shape`, from shapes only (no init
  compilation): kernels U(+-1/sqrt(fan_in)) as torch, the rest as `_randomize`."""
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape, model.dtype)))

  def draw(leaf):
    bound = 1 / np.sqrt(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1.0
    return rng.uniform(-bound, bound, leaf.shape)

  return _randomize(jax.tree_util.tree_map(draw, dict(shapes)), seed, biases=biases)


def _randomize(variables, seed, *, biases=True):
  """float64 variables; random batch-norm statistics; biases zeroed unless `biases`."""
  rng = np.random.default_rng(seed)

  def fix(path, leaf):
    names = [getattr(p, "key", "") for p in path]
    leaf = np.asarray(leaf, np.float64)
    if names[0] == "batch_stats":
      leaf = rng.uniform(-0.2, 0.2, leaf.shape) if names[-1] == "mean" else rng.uniform(
          0.5, 1.5, leaf.shape)
      if names[-1] == "mean" and not biases:
        leaf = np.zeros_like(leaf)
    elif names[-1] == "scale":
      leaf = rng.uniform(0.5, 1.5, leaf.shape)
    elif names[-1] == "bias":
      leaf = rng.uniform(-0.2, 0.2, leaf.shape) if biases else np.zeros_like(leaf)
    return jnp.asarray(leaf)

  return jax.tree_util.tree_map_with_path(fix, dict(variables))


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max() / np.abs(b).max())


# ---------------------------------------------------------------------------
# A NumPy LRP written from the rule formulas (no gradients).
# ---------------------------------------------------------------------------


def _stab(z, eps):
  return z + np.where(z >= 0, eps, -eps)


def _modify(kernel, bias, rule, gamma, zero_bias):
  if rule == "epsilon":
    return kernel, bias
  new = kernel + gamma * np.maximum(kernel, 0) if rule == "gamma" else np.maximum(kernel, 0)
  return new, (np.zeros_like(bias) if rule == "zplus" or zero_bias else bias)


def _conv(a, kernel, bias):
  """Stride-1 'same' conv (odd kernel), NHWC, plain loops."""
  k = kernel.shape[0]
  p = k // 2
  ap = np.pad(a, ((0, 0), (p, p), (p, p), (0, 0)))
  out = np.zeros(a.shape[:3] + (kernel.shape[3],))
  for i in range(a.shape[1]):
    for j in range(a.shape[2]):
      out[:, i, j] = np.einsum("nabc,abcd->nd", ap[:, i:i + k, j:j + k], kernel) + bias
  return out


def _conv_relevance(a, kernel, bias, relevance, eps, rule, gamma, zero_bias):
  kernel, bias = _modify(kernel, bias, rule, gamma, zero_bias)
  s = relevance / _stab(_conv(a, kernel, bias), eps)
  k = kernel.shape[0]
  p = k // 2
  c = np.zeros((a.shape[0], a.shape[1] + 2 * p, a.shape[2] + 2 * p, a.shape[3]))
  for i in range(a.shape[1]):
    for j in range(a.shape[2]):
      c[:, i:i + k, j:j + k] += np.einsum("nd,abcd->nabc", s[:, i, j], kernel)
  return a * c[:, p:p + a.shape[1], p:p + a.shape[2]]


def _dense_relevance(a, kernel, bias, relevance, eps, rule, gamma, zero_bias):
  kernel, bias = _modify(kernel, bias, rule, gamma, zero_bias)
  return a * ((relevance / _stab(a @ kernel + bias, eps)) @ kernel.T)


def _batch_norm(z, bn, stats):
  gain = bn["scale"] / np.sqrt(stats["var"] + 1e-5)
  return gain, bn["bias"] - stats["mean"] * gain


def _bn_relevance(z, bn, stats, relevance, eps):
  gain, bias = _batch_norm(z, bn, stats)
  return z * gain * relevance / _stab(z * gain + bias, eps)


def _max_pool_relevance(a, relevance):
  """2x2/2 windows: each window's relevance to its first maximum (row-major)."""
  out = np.zeros_like(a)
  for n in range(a.shape[0]):
    for i in range(relevance.shape[1]):
      for j in range(relevance.shape[2]):
        for c in range(a.shape[3]):
          window = a[n, 2 * i:2 * i + 2, 2 * j:2 * j + 2, c].reshape(-1)
          di, dj = divmod(int(np.argmax(window)), 2)
          out[n, 2 * i + di, 2 * j + dj, c] = relevance[n, i, j, c]
  return out


def _proportional(parts, total, relevance):
  """Splits `relevance` of `total = sum(parts)` in proportion (0/0 -> 0)."""
  safe = np.where(total == 0, 1.0, total)
  return [np.where(total == 0, 0.0, p * relevance / safe) for p in parts]


def _target_relevance(logits, t):
  r = np.zeros_like(logits)
  r[np.arange(len(t)), t] = logits[np.arange(len(t)), t]
  return r


def _np(v):
  return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), v)


def _tinynet_reference(variables, x, t, *, rules, eps, gamma, zero_bias):
  p, st = _np(variables["params"]), _np(variables["batch_stats"])
  x = np.asarray(x, np.float64)
  rule = lambda name: rules[name]
  z1 = _conv(x, p["conv1"]["kernel"], p["conv1"]["bias"])
  a1 = np.maximum(z1, 0)
  n, h, w, c = a1.shape
  m1 = a1.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
  z2 = _conv(m1, p["conv2"]["kernel"], p["conv2"]["bias"])
  gain, beff = _batch_norm(z2, p["bn2"], st["bn2"])
  a2 = np.maximum(z2 * gain + beff, 0)
  n, h, w, c = a2.shape
  v2 = a2.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
  f = v2.transpose(0, 3, 1, 2).reshape(n, -1)
  a3 = np.maximum(f @ p["fc1"]["kernel"] + p["fc1"]["bias"], 0)
  logits = a3 @ p["fc2"]["kernel"] + p["fc2"]["bias"]
  opts = dict(eps=eps, gamma=gamma, zero_bias=zero_bias)
  r = _dense_relevance(a3, p["fc2"]["kernel"], p["fc2"]["bias"], _target_relevance(logits, t),
                       rule=rule("fc2"), **opts)
  r = _dense_relevance(f, p["fc1"]["kernel"], p["fc1"]["bias"], r, rule=rule("fc1"), **opts)
  r = r.reshape(v2.shape[0], v2.shape[3], v2.shape[1], v2.shape[2]).transpose(0, 2, 3, 1)
  r_a2 = np.zeros_like(a2)
  for di in range(2):
    for dj in range(2):
      part = a2[:, di::2, dj::2]
      r_a2[:, di::2, dj::2] = _proportional([part], 4 * v2, r)[0]
  r = _bn_relevance(z2, p["bn2"], st["bn2"], r_a2, eps)
  r = _conv_relevance(m1, p["conv2"]["kernel"], p["conv2"]["bias"], r, rule=rule("conv2"),
                      **opts)
  r = _max_pool_relevance(a1, r)
  return _conv_relevance(x, p["conv1"]["kernel"], p["conv1"]["bias"], r, rule=rule("conv1"),
                         **opts)


def _resblock_reference(variables, x, t, *, rules, eps, gamma):
  p, st = _np(variables["params"]), _np(variables["batch_stats"])
  x = np.asarray(x, np.float64)
  zero = np.zeros(3)
  opts = dict(eps=eps, gamma=gamma, zero_bias=False)
  z1 = _conv(x, p["conv1"]["kernel"], zero)
  g1, b1 = _batch_norm(z1, p["bn1"], st["bn1"])
  a1 = np.maximum(z1 * g1 + b1, 0)
  z2 = _conv(a1, p["conv2"]["kernel"], zero)
  g2, b2 = _batch_norm(z2, p["bn2"], st["bn2"])
  u = z2 * g2 + b2
  y = np.maximum(u + x, 0)
  pooled = y.mean(axis=(1, 2))
  logits = pooled @ p["fc"]["kernel"] + p["fc"]["bias"]
  r = _dense_relevance(pooled, p["fc"]["kernel"], p["fc"]["bias"],
                       _target_relevance(logits, t), rule=rules["fc"], **opts)
  hw = y.shape[1] * y.shape[2]
  r_y = _proportional([y], hw * pooled[:, None, None, :], r[:, None, None, :])[0]
  r_u, r_skip = _proportional([u, x], u + x, r_y)  # the addition: in proportion
  r = _bn_relevance(z2, p["bn2"], st["bn2"], r_u, eps)
  r = _conv_relevance(a1, p["conv2"]["kernel"], zero, r, rule=rules["conv2"], **opts)
  r = _bn_relevance(z1, p["bn1"], st["bn1"], r, eps)
  r = _conv_relevance(x, p["conv1"]["kernel"], zero, r, rule=rules["conv1"], **opts)
  return r + r_skip


@pytest.fixture(scope="module")
def tinynet():
  with jax.enable_x64(True):
    model = TinyNet(dtype=jnp.float64)
    variables = _variables(model, (1, 8, 8, 2), 1)
    x = jnp.asarray(RNG.normal(size=(3, 8, 8, 2)))
  return model, variables, x, np.array([0, 2, 3])


TINY_CASES = {
    "epsilon": (dict(), dict(rule="epsilon", eps=1e-9, gamma=0.25, zero_bias=False)),
    "large_epsilon": (dict(epsilon=0.05), dict(rule="epsilon", eps=0.05, gamma=0.25,
                                               zero_bias=False)),
    "gamma": (dict(rule="gamma", gamma=0.7), dict(rule="gamma", eps=1e-9, gamma=0.7,
                                                  zero_bias=False)),
    "gamma_zero_bias": (dict(rule="gamma", zero_bias=True),
                        dict(rule="gamma", eps=1e-9, gamma=0.25, zero_bias=True)),
    "alpha1_beta0": (dict(rule="alpha1_beta0"), dict(rule="alpha1_beta0", eps=1e-9, gamma=0.25,
                                                     zero_bias=False)),
    "zplus": (dict(rule="zplus", epsilon=0.01), dict(rule="zplus", eps=0.01, gamma=0.25,
                                                     zero_bias=False)),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(TINY_CASES))
def test_tinynet_matches_numpy_reference(tinynet, case):
  model, variables, x, t = tinynet
  options, ref = TINY_CASES[case]
  ref = dict(ref)
  rule = ref.pop("rule")
  rules = {name: rule for name in ("conv1", "conv2", "fc1", "fc2")}
  with jax.enable_x64(True):
    got = explain.lrp(model, variables, x, t, **options)
  want = _tinynet_reference(variables, x, t, rules=rules, **ref)
  assert got.dtype == jnp.float64
  assert _rel(got, want) < 1e-10, case


@pytest.mark.slow
def test_tinynet_per_layer_rules_match_numpy_reference(tinynet):
  model, variables, x, t = tinynet
  layer_rules = {"conv1": "zplus", "conv2": "gamma", "fc1": "alpha1_beta0"}
  with jax.enable_x64(True):
    got = explain.explain("lrp", model, variables, x, t, layer_rules=layer_rules, epsilon=0.02)
  want = _tinynet_reference(variables, x, t, rules={**layer_rules, "fc2": "epsilon"},
                            eps=0.02, gamma=0.25, zero_bias=False)
  assert _rel(got, want) < 1e-10
  # The rules matter: the uniform epsilon rule gives another map.
  with jax.enable_x64(True):
    assert _rel(explain.lrp(model, variables, x, t, epsilon=0.02), want) > 1e-2


@pytest.mark.slow
@pytest.mark.parametrize("rule", ["epsilon", "gamma", "zplus"])
def test_residual_addition_splits_relevance_in_proportion(rule):
  with jax.enable_x64(True):
    model = ResBlockNet(dtype=jnp.float64)
    variables = _variables(model, (1, 4, 4, 3), 2)
    x = jnp.asarray(RNG.normal(size=(2, 4, 4, 3)))
    t = np.array([1, 2])
    got = explain.lrp(model, variables, x, t, rule=rule, epsilon=0.01)
  want = _resblock_reference(variables, x, t, eps=0.01, gamma=0.25,
                             rules={"conv1": rule, "conv2": rule, "fc": rule})
  assert _rel(got, want) < 1e-10


@pytest.mark.slow
def test_epsilon_to_zero_equals_input_x_gradient_with_biases():
  """Ancona et al. 2018, Prop. 1: epsilon-LRP -> input x gradient for ReLU networks."""
  with jax.enable_x64(True):
    for name, size, seed, kw in (("cnn", 8, 3, {}), ("small_vgg", 16, 4, {"widths": (4, 8)})):
      model = models.get(name, num_classes=K, dtype=jnp.float64, **kw)
      variables = _variables(model, (1, size, size, 3), seed)
      x = jnp.asarray(np.random.default_rng(seed).uniform(size=(2, size, size, 3)))
      t = np.array([1, 3])
      ixg = explain.input_x_gradient(model, variables, x, t)
      assert _rel(explain.lrp(model, variables, x, t, epsilon=1e-30), ixg) < 1e-12, name
      # A finite epsilon absorbs relevance: no longer input x gradient.
      assert _rel(explain.lrp(model, variables, x, t, epsilon=1e-2), ixg) > 1e-3, name


@pytest.mark.slow
@pytest.mark.parametrize("name, kw", [("resnet18", {}), ("small_vgg", {"widths": (8, 16)})])
def test_bias_free_relevance_sums_to_the_logit_for_every_rule(name, kw):
  with jax.enable_x64(True):
    model = models.get(name, num_classes=K, dtype=jnp.float64, **kw)
    variables = _variables(model, (1, 32, 32, 3), 5, biases=False)
    x = jnp.asarray(np.random.default_rng(5).uniform(size=(2, 32, 32, 3)))
    t = np.array([0, 2])
    logits = np.asarray(model.apply(variables, x))[np.arange(2), t]
    for rule in lrp_module.RULES:
      relevance = np.asarray(explain.lrp(model, variables, x, t, rule=rule, epsilon=1e-30))
      np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), logits, rtol=1e-9, err_msg=rule)
    # With biases, relevance is absorbed (the sums differ).
    biased = _randomize(variables, 6)
    logits = np.asarray(model.apply(biased, x))[np.arange(2), t]
    sums = np.asarray(explain.lrp(model, biased, x, t, epsilon=1e-30)).sum(axis=(1, 2, 3))
    assert np.abs(sums - logits).max() > 1e-6 * np.abs(logits).max()


# ---------------------------------------------------------------------------
# The contract addition and the checks.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_linear_layers_and_their_re_evaluation():
  model = models.get("resnet18", num_classes=K)
  variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32),
                                     _variables(model, (1, 32, 32, 3), 7))
  x = jnp.asarray(RNG.normal(size=(2, 32, 32, 3)), jnp.float32)
  listed = taps.linear_layers(model, variables, x)
  assert listed[:4] == (("conv1", "conv"), ("bn1", "batch_norm"), ("layer1_0/conv1", "conv"),
                        ("layer1_0/bn1", "batch_norm"))
  assert listed[-1] == ("fc", "dense") and len(listed) == 41  # 20 convs, 20 BNs, fc
  seen = []

  def re_evaluate(call):  # the same parameters through `apply` give the same output
    seen.append(call.name)
    assert call.params.keys() == ({"scale", "bias"} if call.kind == "batch_norm" else
                                  {"kernel"} if call.kind == "conv" else {"kernel", "bias"})
    return call.apply(call.params)

  def run(variables, x):
    with taps.linear_layer_rule(re_evaluate):
      return model.apply(variables, x)

  out = jax.jit(run)(variables, x)
  assert tuple(seen) == tuple(name for name, _ in listed)
  np.testing.assert_allclose(out, model.apply(variables, x), rtol=1e-5, atol=1e-6)


class NotLinear(nn.Module):
  """Owns a dense-shaped kernel but applies it after a max-pool of the image."""
  num_classes: int = K
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  gradcam_layer = None

  @nn.compact
  def __call__(self, x, *, train=False):
    p = self.ops.max_pool(x, window=2, stride=2, padding=0)
    kernel = self.param("kernel", nn.initializers.normal(1.0), (p[0].size, self.num_classes))
    return p.reshape(p.shape[0], -1) @ kernel


@pytest.mark.slow
def test_errors():
  # Every check runs from shapes: variables as ShapeDtypeStructs suffice.
  shapes = lambda model: jax.eval_shape(lambda: models.init(model, jax.random.key(0),
                                                            (1, 8, 8, 3)))
  model = models.get("cnn", num_classes=K)
  variables = shapes(model)
  x = np.zeros((2, 8, 8, 3), np.float32)
  t = np.array([0, 1])
  with pytest.raises(ValueError, match="unknown rule 'z'; valid: epsilon, gamma, alpha1_beta0"):
    explain.lrp(model, variables, x, t, rule="z")
  for bad in (-1.0, 0.0, float("nan")):
    with pytest.raises(ValueError, match="epsilon must be > 0"):
      explain.lrp(model, variables, x, t, epsilon=bad)
  with pytest.raises(ValueError, match="gamma must be >= 0"):
    explain.lrp(model, variables, x, t, rule="gamma", gamma=-0.1)
  with pytest.raises(ValueError, match=r"unknown layer 'conv3' in layer_rules; conv and dense "
                                       r"layers: conv1, conv2, fc1, fc2"):
    explain.lrp(model, variables, x, t, layer_rules={"conv3": "gamma"})
  with pytest.raises(ValueError, match="needs an xai_jax.models contract model"):
    explain.lrp(models.as_apply(model), variables, x, t)
  bn_model = models.get("small_vgg", num_classes=K, widths=(4,), hidden=4)
  bn_variables = shapes(bn_model)
  with pytest.raises(ValueError, match="'bn1_1' is a batch norm"):
    explain.lrp(bn_model, bn_variables, x, t, layer_rules={"bn1_1": "gamma"})
  odd = NotLinear()
  odd_variables = shapes(odd)
  with pytest.raises(ValueError, match=r"module '<root>' owns parameters \{'kernel': \(48, 4\)\}"
                                       r" .* not a conv, dense or batch-norm layer"):
    explain.lrp(odd, odd_variables, x, t)
  with pytest.raises(ValueError, match="lrp: unknown rule"):
    explain.check_options("lrp", {"rule": "alpha2_beta1"})
  explain.check_options("lrp", {"rule": "gamma", "gamma": 0.5, "layer_rules": {"a": "zplus"}})


# ---------------------------------------------------------------------------
# Captum parity (torch).
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def captum_vgg():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  pytest.importorskip("captum")
  from xai_jax.models import port  # pylint: disable=import-outside-toplevel
  nets = {}
  for name in ("vgg11", "vgg11_bn"):
    torch.manual_seed(0)
    net = narrow_nets.narrow_vgg(
        getattr(torchvision.models, name)(weights=None, num_classes=10)).eval()
    with torch.no_grad():
      for module in net.modules():
        if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
          module.bias.uniform_(-0.1, 0.1)
        if isinstance(module, torch.nn.BatchNorm2d):
          module.weight.uniform_(0.5, 1.5)
          module.bias.uniform_(-0.2, 0.2)
          module.running_mean.uniform_(-0.2, 0.2)
          module.running_var.uniform_(0.5, 1.5)
    x = torch.rand(2, 3, 32, 32)
    variables = port.from_torchvision(name, net.state_dict(),
                                      classifier_width=narrow_nets.WIDTH)
    with jax.enable_x64(True):
      variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    net, x = net.double(), x.double()
    target = net(x).argmin(1)  # not the arg-max
    nets[name] = (net, x, target, variables)
  return torch, nets


def _captum_lrp(torch, net, x, target, rule):
  from captum.attr import LRP  # pylint: disable=import-outside-toplevel
  from captum.attr._utils import lrp_rules  # pylint: disable=import-outside-toplevel
  for module in net.modules():
    if isinstance(module, (torch.nn.MaxPool2d, torch.nn.AdaptiveAvgPool2d)):
      module.rule = lrp_rules.EpsilonRule(1e-100)  # proportional (see the module docstring)
    elif isinstance(module, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d)):
      module.rule = rule(module)
  out = LRP(net).attribute(x, target=target)  # Captum removes the rules afterwards
  return out.detach().permute(0, 2, 3, 1).numpy()


def _captum_cases(torch):
  from captum.attr._utils import lrp_rules as r  # pylint: disable=import-outside-toplevel
  linear = (torch.nn.Conv2d, torch.nn.Linear)
  per_type = lambda make: lambda m: make() if isinstance(m, linear) else r.EpsilonRule()
  return {
      "epsilon": (lambda m: r.EpsilonRule(), {}),
      "epsilon_0.1": (lambda m: r.EpsilonRule(0.1), {"epsilon": 0.1}),  # BN too
      "gamma": (per_type(r.GammaRule), {"rule": "gamma"}),
      "gamma_zero_bias": (per_type(lambda: r.GammaRule(gamma=0.5, set_bias_to_zero=True)),
                          {"rule": "gamma", "gamma": 0.5, "zero_bias": True}),
      "alpha1_beta0": (per_type(r.Alpha1_Beta0_Rule), {"rule": "alpha1_beta0"}),
      "zplus": (per_type(lambda: r.Alpha1_Beta0_Rule(set_bias_to_zero=True)), {"rule": "zplus"}),
  }


CAPTUM_RUNS = [("vgg11", case) for case in ("epsilon", "epsilon_0.1", "gamma", "gamma_zero_bias",
                                            "alpha1_beta0", "zplus")]
CAPTUM_RUNS += [("vgg11_bn", case) for case in ("epsilon_0.1", "gamma", "zplus")]


CAPTUM_WARNING = "ignore:Input Tensor 0 did not already require gradients"


@pytest.mark.torch
@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.filterwarnings(CAPTUM_WARNING)
@pytest.mark.parametrize("name, case", CAPTUM_RUNS)
def test_captum_lrp_parity(captum_vgg, name, case):
  torch, nets = captum_vgg
  net, x, target, variables = nets[name]
  rule, options = _captum_cases(torch)[case]
  want = _captum_lrp(torch, net, x, target, rule)
  with jax.enable_x64(True):
    model = models.get(name, num_classes=10, dtype=jnp.float64,
                       classifier_width=narrow_nets.WIDTH)
    xj = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
    got = explain.lrp(model, variables, xj, jnp.asarray(target.numpy()), **options)
  assert _rel(got, want) < 1e-10, (name, case)


@pytest.mark.torch
@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.filterwarnings(CAPTUM_WARNING)
def test_captum_lrp_parity_per_layer_rules(captum_vgg):
  torch, nets = captum_vgg
  net, x, target, variables = nets["vgg11"]
  from captum.attr._utils import lrp_rules as r  # pylint: disable=import-outside-toplevel
  chosen = {net.features[0]: r.Alpha1_Beta0_Rule(set_bias_to_zero=True),
            net.features[3]: r.GammaRule(), net.features[6]: r.GammaRule(),
            net.classifier[0]: r.Alpha1_Beta0_Rule()}
  want = _captum_lrp(torch, net, x, target, lambda m: chosen.get(m, r.EpsilonRule()))
  layer_rules = {"features_0": "zplus", "features_3": "gamma", "features_6": "gamma",
                 "classifier_0": "alpha1_beta0"}
  with jax.enable_x64(True):
    model = models.get("vgg11", num_classes=10, dtype=jnp.float64,
                       classifier_width=narrow_nets.WIDTH)
    xj = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
    got = explain.lrp(model, variables, xj, jnp.asarray(target.numpy()),
                      layer_rules=layer_rules)
  assert _rel(got, want) < 1e-10
