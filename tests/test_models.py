"""Tests of xai_jax.models (no torch): names, shapes, layers, the taps contract.

References are independent: numpy loops for pooling, a hand-written numpy
forward/backward of an MLP, central finite differences in float64, FullGrad
completeness, and hand-counted torchvision layer lists.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import models
from xai_jax.models import layers, taps

REQUIRED = ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn",
            "vgg16_bn", "vgg19_bn", "resnet18", "resnet34", "resnet50", "cnn",
            "mlp", "alexnet_plus")


class TinyResBN(nn.Module):
  """A small piecewise-linear net with every kind of site: BN (with and without
  a conv bias before it), a residual add, -inf padded max-pool, adaptive pool
  with overlapping bins, NCHW flatten and a dense layer."""
  num_classes: int = 3
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  gradcam_layer = "relu2"

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = layers.Conv(4, 3, padding=1, use_bias=False, dtype=self.dtype, name="conv1")(x)
    x = layers.BatchNorm(dtype=self.dtype, name="bn1")(x, train=train)
    x = taps.activation(self, "relu1", self.ops.relu(x))
    x = self.ops.max_pool(x, window=3, stride=2, padding=1)
    y = layers.Conv(4, 3, padding=1, dtype=self.dtype, name="conv2")(x)
    y = layers.BatchNorm(dtype=self.dtype, name="bn2")(y, train=train)
    x = taps.activation(self, "relu2", self.ops.relu(x + y))
    x = layers.adaptive_avg_pool(x, (3, 3))
    x = layers.flatten_nchw(x)
    return layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(x)


def _randomise_batch_stats(variables, key):
  """Random running mean/var and BN scale/bias (as the parity tests do)."""
  flat = dict(jax.tree_util.tree_flatten_with_path(variables)[0])
  out = {}
  for i, (path, leaf) in enumerate(flat.items()):
    k = jax.random.fold_in(key, i)
    names = [getattr(p, "key", "") for p in path]
    if names[-1] == "var":
      leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=2.0)
    elif names[-1] == "mean":
      leaf = 0.5 * jax.random.normal(k, leaf.shape)
    elif names[-1] == "scale":
      leaf = jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5)
    elif names[-1] == "bias" and names[0] == "params":
      leaf = 0.3 * jax.random.normal(k, leaf.shape)
    out[tuple(path)] = leaf
  treedef = jax.tree_util.tree_structure(variables)
  return jax.tree_util.tree_unflatten(treedef, list(out.values()))


# ------------------------------------------------------------------ registry


def test_names_and_unknown_name():
  assert set(REQUIRED) <= set(models.NAMES)
  with pytest.raises(ValueError, match="valid names: .*vgg16.*resnet50"):
    models.get("vgg17")
  with pytest.raises(ValueError, match="head"):
    models.get("vgg16", head="keras")
  with pytest.raises(ValueError, match="extra_layers"):
    models.get("alexnet_plus", extra_layers=-1)
  for name in ("vgg11", "alexnet"):
    for bad in (0, True, 2.5):
      with pytest.raises(ValueError, match="classifier_width must be a positive int"):
        jax.eval_shape(lambda n=name, w=bad: models.init(
            models.get(n, num_classes=3, classifier_width=w), jax.random.key(0), (1, 64, 64, 3)))
    narrow = jax.eval_shape(lambda n=name: models.init(
        models.get(n, num_classes=3, classifier_width=8), jax.random.key(0), (1, 64, 64, 3)))
    kernels = [v.shape for p, v in jax.tree_util.tree_leaves_with_path(narrow["params"])
               if "classifier" in jax.tree_util.keystr(p) and "kernel" in jax.tree_util.keystr(p)]
    assert [k[-1] for k in kernels] == [8, 8, 3], (name, kernels)


@pytest.mark.parametrize("name,size", [
    ("alexnet", (63, 80)), ("alexnet_plus", (96, 96)), ("vgg11", (32, 48)),
    ("vgg13_bn", (40, 40)), ("vgg16", (224, 224)), ("vgg19_bn", (64, 64)),
    ("resnet18", (33, 47)), ("resnet34", (64, 64)), ("resnet50", (96, 64)),
    ("cnn", (28, 28)), ("mlp", (28, 28))])
def test_output_shapes_and_variables(name, size):
  channels = 1 if name in ("cnn", "mlp") else 3
  model = models.get(name, num_classes=7)
  x = jax.ShapeDtypeStruct((2, *size, channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  assert set(variables) == ({"params", "batch_stats"}
                            if ("_bn" in name or "resnet" in name) else {"params"})
  logits = jax.eval_shape(model.apply, variables, x)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32


def test_torchvision_parameter_counts():
  # torchvision's documented parameter counts (num_classes=1000).
  expected = {"alexnet": 61_100_840, "vgg16": 138_357_544, "vgg11_bn": 132_868_840,
              "resnet18": 11_689_512, "resnet50": 25_557_032}
  for name, count in expected.items():
    model = models.get(name)
    v = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3))
                                          if "alexnet" not in name else
                                          jnp.zeros((1, 224, 224, 3))))
    n = sum(math.prod(a.shape) for a in jax.tree.leaves(v["params"]))
    assert n == count, name


# ------------------------------------------------------------------ layers


def _np_adaptive(x, out_h, out_w):
  n, h, w, c = x.shape
  y = np.zeros((n, out_h, out_w, c), np.float64)
  for i in range(out_h):
    h0, h1 = (i * h) // out_h, math.ceil((i + 1) * h / out_h)
    for j in range(out_w):
      w0, w1 = (j * w) // out_w, math.ceil((j + 1) * w / out_w)
      y[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return y


@pytest.mark.parametrize("in_hw,out_hw", [((2, 3), (7, 7)), ((13, 10), (7, 7)),
                                          ((5, 9), (3, 2)), ((6, 6), (6, 6)),
                                          ((4, 5), (1, 1))])
def test_adaptive_avg_pool_matches_torch_bins(in_hw, out_hw):
  x = np.random.default_rng(0).normal(size=(2, *in_hw, 3)).astype(np.float32)
  got = layers.adaptive_avg_pool(jnp.asarray(x), out_hw)
  np.testing.assert_allclose(got, _np_adaptive(x, *out_hw), rtol=1e-5, atol=1e-6)


def _np_max_pool(x, window, stride, padding):
  n, h, w, c = x.shape
  xp = np.full((n, h + 2 * padding, w + 2 * padding, c), -np.inf)
  xp[:, padding:padding + h, padding:padding + w] = x
  oh = (h + 2 * padding - window) // stride + 1
  ow = (w + 2 * padding - window) // stride + 1
  y = np.zeros((n, oh, ow, c))
  for i in range(oh):
    for j in range(ow):
      y[:, i, j] = xp[:, i * stride:i * stride + window,
                      j * stride:j * stride + window].max(axis=(1, 2))
  return y


@pytest.mark.parametrize("shape,window,stride,padding", [
    ((1, 7, 9, 2), 3, 2, 1), ((2, 8, 8, 1), 2, 2, 0), ((1, 13, 11, 3), 3, 2, 0)])
def test_max_pool_torch_semantics(shape, window, stride, padding):
  x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
  got = taps.max_pool(jnp.asarray(x), window=window, stride=stride, padding=padding)
  np.testing.assert_allclose(got, _np_max_pool(x, window, stride, padding), rtol=0)


def test_max_pool_tie_gradient_goes_to_first_maximum():
  x = jnp.ones((1, 2, 2, 1))
  g = jax.grad(lambda x: taps.max_pool(x, window=2, stride=2, padding=0).sum())(x)
  np.testing.assert_array_equal(g[0, :, :, 0], [[1.0, 0.0], [0.0, 0.0]])
  with pytest.raises(ValueError, match="smaller than the window"):
    taps.max_pool(jnp.ones((1, 2, 2, 1)), window=3, stride=2, padding=0)


def test_batch_norm_train_mode_updates_running_stats_like_torch():
  bn = layers.BatchNorm()
  x = np.random.default_rng(2).normal(2.0, 3.0, size=(4, 3, 5, 2)).astype(np.float32)
  v = bn.init(jax.random.key(0), x)
  y, state = bn.apply(v, x, train=True, mutable=["batch_stats"])
  mean, var = x.mean((0, 1, 2)), x.var((0, 1, 2))
  np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-5), rtol=1e-4, atol=1e-5)
  n = 4 * 3 * 5
  np.testing.assert_allclose(state["batch_stats"]["mean"], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(state["batch_stats"]["var"],
                             0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
  # eval uses the running statistics.
  v2 = {"params": v["params"], "batch_stats": state["batch_stats"]}
  rm, rv = state["batch_stats"]["mean"], state["batch_stats"]["var"]
  np.testing.assert_allclose(bn.apply(v2, x), (x - rm) / np.sqrt(rv + 1e-5),
                             rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ the contract


def _expected_counts(name):
  """(relus, leaky_relus, max_pools) hand-counted from torchvision's modules."""
  return {"vgg11": (10, 0, 5), "vgg16_bn": (15, 0, 5), "alexnet": (7, 0, 3),
          "resnet18": (1 + 8 * 2, 0, 1), "resnet50": (1 + 16 * 3, 0, 1),
          "cnn": (3, 0, 2), "mlp": (3, 0, 0), "small_vgg": (3 * 2 + 1, 0, 3 + 1)}[name]


@pytest.mark.parametrize("name", ["vgg11", "vgg16_bn", "alexnet", "resnet18",
                                  "resnet50", "cnn", "mlp", "small_vgg"])
def test_every_nonlinearity_goes_through_ops(name):
  calls = {"relu": 0, "leaky": 0, "pool": 0}

  def relu(x):
    calls["relu"] += 1
    return jax.nn.relu(x)

  def leaky(x, slope):
    calls["leaky"] += 1
    return jax.nn.leaky_relu(x, slope)

  def pool(x, **kw):
    calls["pool"] += 1
    return taps.max_pool(x, **kw)

  model = models.get(name, num_classes=5)
  size = (1, 224, 224, 3) if name == "alexnet" else (1, 64, 64, 3)
  custom = taps.with_ops(model, taps.Ops(relu=relu, leaky_relu=leaky, max_pool=pool))
  x = jax.ShapeDtypeStruct(size, jnp.float32)
  v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  calls.update(relu=0, leaky=0, pool=0)
  names = taps.activation_names(custom, v, x)
  assert (calls["relu"], calls["leaky"], calls["pool"]) == _expected_counts(name)
  assert len(names) == calls["relu"]  # one activation per ReLU (block outputs included)


def test_tjoa_heads_use_leaky_relu_and_shapes():
  for name, leaky in (("vgg16", 2), ("alexnet", 2), ("alexnet_plus", 2), ("resnet34", 0)):
    count = {"n": 0}

    def lk(x, slope):
      assert slope == 0.01
      count["n"] += 1
      return jax.nn.leaky_relu(x, slope)

    model = models.get(name, num_classes=10, head="tjoa",
                       ops=taps.Ops(leaky_relu=lk))
    x = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
    count["n"] = 0
    assert jax.eval_shape(model.apply, v, x).shape == (1, 10)
    assert count["n"] == leaky, name
    if name == "vgg16":
      assert v["params"]["classifier_4"]["kernel"].shape == (4096, 10)
      assert "classifier_6" not in v["params"]
    if name == "resnet34":
      assert v["params"]["fc"]["kernel"].shape == (1, 1, 512, 10)
      assert v["params"]["fc"]["bias"].shape == (10,)


def test_activation_and_bias_names_in_forward_order():
  model = models.get("vgg11", num_classes=4)
  x = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  relus = [1, 4, 7, 9, 12, 14, 17, 19]
  assert taps.activation_names(model, v, x) == tuple(
      [f"features_{i}" for i in relus] + ["classifier_1", "classifier_4"])
  convs = [0, 3, 6, 8, 11, 13, 16, 18]
  assert taps.bias_site_names(model, v, x) == tuple(
      [f"features_{i}/bias" for i in convs]
      + ["classifier_0/bias", "classifier_3/bias", "classifier_6/bias"])
  # FullGrad's counts (reference-semantics B): vgg11_bn 19, resnet18 21.
  for name, n in (("vgg11_bn", 19), ("resnet18", 21)):
    m = models.get(name)
    v = jax.eval_shape(lambda x: m.init(jax.random.key(0), x), x)
    assert len(taps.bias_site_names(m, v, x)) == n


def test_default_gradcam_layers():
  expected = {"vgg16": "features_29", "vgg16_bn": "features_42", "vgg19": "features_35",
              "alexnet": "features_11", "resnet18": "layer4_1/relu2",
              "resnet34": "layer4_2/relu2", "resnet50": "layer4_2/relu3", "cnn": "relu2"}
  for name, layer in expected.items():
    assert taps.default_gradcam_layer(models.get(name)) == layer
  assert taps.default_gradcam_layer(models.get("alexnet_plus", extra_layers=3)) == "extra_2_relu"
  with pytest.raises(ValueError, match="no default Grad-CAM"):
    taps.default_gradcam_layer(models.get("mlp"))
  # The Grad-CAM layer is an activation of the model, in the last conv block.
  for name in ("vgg16", "resnet18"):
    m = models.get(name)
    x = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    v = jax.eval_shape(lambda x: m.init(jax.random.key(0), x), x)
    names = taps.activation_names(m, v, x)
    assert m.gradcam_layer in names


def _mlp_setup():
  model = models.get("mlp", num_classes=3, hidden=(6, 5))
  x = jax.random.normal(jax.random.key(3), (2, 2, 2, 2))
  v = models.init(model, jax.random.key(4), x.shape)
  return model, v, x


def _np_mlp(v, x, target, guided=False):
  """Hand-written numpy forward and backward of the 3-layer MLP."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), v["params"])
  h = np.asarray(x, np.float64).transpose(0, 3, 1, 2).reshape(len(x), -1)
  pre, acts = [], []
  for i in (1, 2):
    z = h @ p[f"fc{i}"]["kernel"] + p[f"fc{i}"]["bias"]
    pre.append(z)
    h = np.maximum(z, 0)
    acts.append(h)
  logits = h @ p["fc3"]["kernel"] + p["fc3"]["bias"]
  g_logits = np.zeros_like(logits)
  g_logits[np.arange(len(x)), target] = 1.0
  bias_grads = {"fc3/bias": g_logits}
  act_grads = {}
  g = g_logits @ p["fc3"]["kernel"].T
  for i in (2, 1):
    act_grads[f"relu{i}"] = g
    g = (pre[i - 1] > 0) * (np.maximum(g, 0) if guided else g)
    bias_grads[f"fc{i}/bias"] = g
    g = g @ p[f"fc{i}"]["kernel"].T
  input_grad = g.reshape(x.shape[0], x.shape[3], x.shape[1], x.shape[2]).transpose(0, 2, 3, 1)
  return logits, acts, act_grads, bias_grads, input_grad


@pytest.mark.slow
def test_tap_gradients_match_hand_written_mlp_backprop():
  model, v, x = _mlp_setup()
  target = jnp.array([2, 0])
  out = jax.jit(lambda v, x, t: models.tap_gradients(model, v, x, t))(v, x, target)
  logits, acts, act_grads, bias_grads, input_grad = _np_mlp(v, x, np.asarray(target))
  np.testing.assert_allclose(out.logits, logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.input_grad, input_grad, rtol=1e-5, atol=1e-6)
  assert list(out.activations) == ["relu1", "relu2"]
  for i in (1, 2):
    np.testing.assert_allclose(out.activations[f"relu{i}"], acts[i - 1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.activation_grads[f"relu{i}"], act_grads[f"relu{i}"],
                               rtol=1e-5, atol=1e-6)
  for k, g in bias_grads.items():
    np.testing.assert_allclose(out.bias_grads[k], g, rtol=1e-5, atol=1e-6)
    name = k.split("/")[0]
    np.testing.assert_array_equal(out.biases[k], v["params"][name]["bias"])


@pytest.mark.slow
def test_with_ops_guided_relu_matches_hand_written_guided_backprop():
  model, v, x = _mlp_setup()
  target = jnp.array([1, 1])

  @jax.custom_vjp
  def guided_relu(x):
    return jax.nn.relu(x)

  guided_relu.defvjp(lambda x: (jax.nn.relu(x), x),
                     lambda x, g: ((x > 0) * jnp.maximum(g, 0),))
  ops = taps.Ops(relu=guided_relu)
  out = jax.jit(lambda v, x: taps.tap_gradients(model, v, x, target, ops=ops))(v, x)
  out2 = jax.jit(lambda v, x: taps.tap_gradients(taps.with_ops(model, ops), v, x, target))(v, x)
  *_, input_grad = _np_mlp(v, x, np.asarray(target), guided=True)
  np.testing.assert_allclose(out.input_grad, input_grad, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(out.input_grad, out2.input_grad)
  plain = jax.jit(lambda v, x: taps.tap_gradients(model, v, x, target))(v, x)
  np.testing.assert_allclose(out.logits, plain.logits, rtol=1e-6)  # forward unchanged
  assert not np.allclose(out.input_grad, plain.input_grad)
  with pytest.raises(ValueError, match="taps.Ops"):
    taps.with_ops(model, {"relu": guided_relu})


@pytest.mark.slow
def test_with_ops_replaces_max_pool_backward():
  model = models.get("cnn", num_classes=3)
  x = jax.random.normal(jax.random.key(5), (2, 8, 8, 1))
  v = models.init(model, jax.random.key(6), x.shape)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
  def blocked_pool(x, window, stride, padding):
    return taps.max_pool(x, window=window, stride=stride, padding=padding)

  blocked_pool.defvjp(
      lambda x, w, s, p: (taps.max_pool(x, window=w, stride=s, padding=p), x),
      lambda w, s, p, x, g: (jnp.zeros_like(x),))
  ops = taps.Ops(max_pool=lambda x, *, window, stride, padding:
                 blocked_pool(x, window, stride, padding))
  out = jax.jit(lambda v, x: taps.tap_gradients(model, v, x, jnp.array([0, 1]), ops=ops))(v, x)
  np.testing.assert_array_equal(out.input_grad, 0.0)
  np.testing.assert_allclose(out.logits, model.apply(v, x), rtol=1e-6)
  assert np.abs(out.activation_grads["relu3"]).sum() > 0  # after the pools


def _fd_setup(model, x_shape, key, bn=False):
  with jax.enable_x64(True):
    kx, kv, ks = jax.random.split(key, 3)
    x = jax.random.normal(kx, x_shape, jnp.float64)
    v = jax.jit(model.init)(kv, x)
    if bn:
      v = jax.jit(_randomise_batch_stats)(v, ks)
    return x, v


@pytest.mark.slow
@pytest.mark.parametrize("which", ["cnn", "resbn", "small_vgg"])
def test_tap_gradients_match_finite_differences_float64(which):
  with jax.enable_x64(True):
    if which == "cnn":
      model = models.get("cnn", num_classes=4, dtype=jnp.float64)
      x, v = _fd_setup(model, (2, 8, 8, 2), jax.random.key(7))
    elif which == "small_vgg":
      model = models.get("small_vgg", num_classes=4, widths=(3, 4), hidden=16,
                         dtype=jnp.float64)
      x, v = _fd_setup(model, (2, 8, 8, 2), jax.random.key(20), bn=True)
    else:
      model = TinyResBN(dtype=jnp.float64)
      x, v = _fd_setup(model, (2, 7, 9, 2), jax.random.key(8), bn=True)
    target = jnp.array([1, 2])
    out = jax.jit(lambda v, x, t: taps.tap_gradients(model, v, x, t))(v, x, target)
    _, probes = jax.eval_shape(lambda: model.apply(
        v, x, mutable=["activation_probes", "bias_probes"]))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), probes)

    @jax.jit
    def score(x, probes):
      logits = model.apply({**v, **probes}, x)
      return logits[jnp.arange(2), target].sum()

    eps = 1e-6
    sites = ([("activation_probes", n) for n in out.activation_grads]
             + [("bias_probes", n) for n in out.bias_grads])
    assert len(sites) >= 6

    def bump(coll, name, value):
      tree = jax.tree.map(np.asarray, zeros)
      node = tree[coll]
      *parents, leaf = name.split("/")
      for p in parents:
        node = node[p]
      node[leaf] = value
      return tree

    # Directions and bumps in numpy: only the jitted `score` runs in JAX.
    rng = np.random.default_rng(9)
    zeros_np = jax.tree.map(np.asarray, zeros)
    d = rng.normal(size=x.shape)
    pairs = [((score(x + eps * d, zeros_np) - score(x - eps * d, zeros_np)) / (2 * eps),
              np.vdot(out.input_grad, d), "input")]
    for coll, name in sites:
      grads = out.activation_grads if coll == "activation_probes" else out.bias_grads
      d = rng.normal(size=grads[name].shape)
      if coll == "activation_probes":
        # A ReLU output of 0 feeding a max-pool window of zeros is a kink
        # (ties); move only the positive entries.
        d = d * (np.asarray(out.activations[name]) > 0)
      fd = (score(x, bump(coll, name, eps * d))
            - score(x, bump(coll, name, -eps * d))) / (2 * eps)
      pairs.append((fd, np.vdot(grads[name], d), name))
    for fd, dot, label in pairs:
      assert abs(float(dot)) > 1e-8, label  # a non-trivial direction
      np.testing.assert_allclose(fd, dot, rtol=1e-6, err_msg=label)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["cnn", "mlp", "resbn", "small_vgg"])
def test_fullgrad_completeness_float64(which):
  with jax.enable_x64(True):
    if which == "cnn":
      model = models.get("cnn", num_classes=4, dtype=jnp.float64)
      x, v = _fd_setup(model, (2, 8, 8, 2), jax.random.key(10))
    elif which == "small_vgg":
      model = models.get("small_vgg", num_classes=4, widths=(3, 4), hidden=16,
                         dtype=jnp.float64)
      x, v = _fd_setup(model, (2, 8, 8, 2), jax.random.key(13), bn=True)
    elif which == "mlp":
      model = models.get("mlp", num_classes=4, hidden=(9, 7, 5), dtype=jnp.float64)
      x, v = _fd_setup(model, (2, 3, 3, 2), jax.random.key(11))
    else:
      model = TinyResBN(dtype=jnp.float64)
      x, v = _fd_setup(model, (2, 7, 9, 2), jax.random.key(12), bn=True)
    target = jnp.array([0, 2])
    out = jax.jit(lambda v, x, t: taps.tap_gradients(model, v, x, t))(v, x, target)
    total = jnp.sum(x * out.input_grad, axis=(1, 2, 3))
    for name, g in out.bias_grads.items():
      total += jnp.sum(g * out.biases[name], axis=tuple(range(1, g.ndim)))
    picked = out.logits[jnp.arange(2), target]
    np.testing.assert_allclose(total, picked, rtol=1e-10, atol=1e-10)
    # Without the bias terms completeness fails: the check is not vacuous.
    assert not np.allclose(jnp.sum(x * out.input_grad, axis=(1, 2, 3)), picked, rtol=1e-3)


@pytest.mark.slow
def test_jit_vmap_and_forward_agree():
  model = TinyResBN()
  x = jax.random.normal(jax.random.key(16), (3, 7, 9, 2))
  v = jax.jit(_randomise_batch_stats)(jax.jit(model.init)(jax.random.key(17), x),
                                      jax.random.key(18))
  target = jnp.array([0, 1, 2])
  eager = taps.tap_gradients(model, v, x, target)
  jitted = jax.jit(lambda v, x, t: taps.tap_gradients(model, v, x, t))(v, x, target)
  jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6),
               eager, jitted)
  per_example = jax.jit(jax.vmap(
      lambda xi, ti: taps.tap_gradients(model, v, xi[None], ti[None])))(x, target)
  np.testing.assert_allclose(per_example.input_grad[:, 0], eager.input_grad,
                             rtol=1e-5, atol=1e-6)
  for k in eager.activation_grads:
    np.testing.assert_allclose(per_example.activation_grads[k][:, 0],
                               eager.activation_grads[k], rtol=1e-5, atol=1e-6)
  logits, acts = jax.jit(lambda v, x: taps.forward(model, v, x))(v, x)
  assert list(eager.activations) == ["relu1", "relu2"]
  assert list(eager.bias_grads) == ["bn1/bias", "conv2/bias", "bn2/bias", "fc/bias"]
  np.testing.assert_allclose(logits, eager.logits, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(acts["relu2"], eager.activations["relu2"], rtol=1e-5, atol=1e-6)
  # scalar target broadcasts; a wrong shape is refused.
  grad_of = jax.jit(lambda t: taps.tap_gradients(model, v, x, t).input_grad)
  np.testing.assert_array_equal(grad_of(1), grad_of(jnp.array([1, 1, 1])))
  with pytest.raises(ValueError, match="target"):
    jax.eval_shape(lambda: taps.tap_gradients(model, v, x, jnp.array([0, 1])))


@pytest.mark.slow
def test_init_has_no_tap_collections_and_apply_any_batch():
  model = models.get("cnn", num_classes=3)
  v = models.init(model, jax.random.key(0), (1, 8, 8, 1))
  assert set(v) == {"params"}
  raw = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1))))
  assert set(raw) == {"params"}
  assert jax.eval_shape(model.apply, v, jnp.zeros((5, 8, 8, 1))).shape == (5, 3)


@pytest.mark.slow
def test_dropout_train_mode_and_eval_determinism():
  model = models.get("alexnet", num_classes=3)
  x = jax.random.uniform(jax.random.key(19), (2, 64, 64, 3))
  v = models.init(model, jax.random.key(20), x.shape)
  apply = jax.jit(model.apply, static_argnames="train")
  eval1, eval2 = apply(v, x), apply(v, x, train=False)
  np.testing.assert_array_equal(eval1, eval2)
  t1 = apply(v, x, train=True, rngs={"dropout": jax.random.key(1)})
  t2 = apply(v, x, train=True, rngs={"dropout": jax.random.key(2)})
  assert not np.allclose(t1, t2) and not np.allclose(t1, eval1)
  with pytest.raises(Exception, match="dropout"):
    jax.eval_shape(lambda: model.apply(v, x, train=True))


@pytest.mark.slow
def test_batch_norm_model_train_mode_mutable_batch_stats():
  model = TinyResBN()
  x = jax.random.normal(jax.random.key(21), (4, 7, 9, 2))
  v = jax.jit(model.init)(jax.random.key(22), x)
  logits, state = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      v, x)
  assert logits.shape == (4, 3)
  changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state["batch_stats"],
                         v["batch_stats"])
  assert all(jax.tree.leaves(changed))


@pytest.mark.slow
def test_bfloat16_compute():
  model32 = models.get("cnn", num_classes=3)
  model16 = models.get("cnn", num_classes=3, dtype=jnp.bfloat16)
  x = jax.random.uniform(jax.random.key(23), (2, 12, 12, 1))
  v = models.init(model32, jax.random.key(24), x.shape)
  a, b = jax.jit(model32.apply)(v, x), jax.jit(model16.apply)(v, x)
  assert b.dtype == jnp.float32
  np.testing.assert_allclose(b, a, rtol=0.05, atol=0.05 * float(jnp.abs(a).max()))
  out = jax.jit(lambda v, x: taps.tap_gradients(model16, v, x, jnp.array([0, 1])))(v, x)
  assert out.activations["relu1"].dtype == jnp.bfloat16
  assert out.biases["conv1/bias"].dtype == jnp.float32


def test_shape_cached_recomputes_only_for_new_shapes_and_stays_bounded():
  from xai_jax.models import base  # pylint: disable=import-outside-toplevel
  calls = []

  @base.shape_cached
  def logits_shape(model, variables, x, extra=()):
    calls.append(x.shape)
    return jax.eval_shape(model.apply, variables, x).shape[1] + len(extra)

  model = models.get("mlp", num_classes=3, hidden=(4,))
  variables = models.init(model, jax.random.key(0), (1, 2, 2, 1))
  assert logits_shape(model, variables, jnp.ones((2, 2, 2, 1))) == 3
  assert logits_shape(model, variables, jax.ShapeDtypeStruct((2, 2, 2, 1), jnp.float32)) == 3
  assert len(calls) == 1  # same shapes: cached, even for a different array type
  assert logits_shape(model, variables, jnp.ones((5, 2, 2, 1)), (0,)) == 4
  assert len(calls) == 2
  for _ in range(2):  # an unhashable argument: computed every time
    assert logits_shape(model, variables, jnp.ones((2, 2, 2, 1)), [0]) == 4
  assert len(calls) == 4
  for n in range(base._SHAPE_CACHE_SIZE + 1):  # pylint: disable=protected-access
    logits_shape(model, variables, jax.ShapeDtypeStruct((n + 10, 2, 2, 1), jnp.float32))
  before = len(calls)
  logits_shape(model, variables, jnp.ones((2, 2, 2, 1)))  # the oldest entry was evicted
  assert len(calls) == before + 1


# ------------------------------------------------------------------ Adebayo et al.'s MNIST models


def _mnist_param_shapes(name, widths=(32, 64), hidden=1024):
  """The appendix's architectures at 28x28x1, written out: {layer: (kernel, bias) shapes}."""
  if name == "cnn":
    c1, c2 = widths
    flat = 7 * 7 * c2  # 28 -> 14 -> 7 after the two 2x2 max-pools
    return {"conv1": ((5, 5, 1, c1), (c1,)), "conv2": ((5, 5, c1, c2), (c2,)),
            "fc1": ((flat, hidden), (hidden,)), "fc2": ((hidden, 10), (10,))}
  sizes = (28 * 28, 2500, 1500, 500, 10)
  return {f"fc{i + 1}": ((a, b), (b,)) for i, (a, b) in enumerate(zip(sizes, sizes[1:]))}


@pytest.mark.parametrize("name,count", [("cnn", 3_274_634), ("mlp", 6_469_510)])
def test_adebayo_mnist_models_at_28x28x1(name, count):
  model = models.get(name, num_classes=10)
  x = jnp.asarray(np.random.default_rng(0).random((2, 28, 28, 1)), jnp.float32)
  variables = models.init(model, jax.random.key(0), x.shape)
  params = variables["params"]
  shapes = {layer: (p["kernel"].shape, p["bias"].shape) for layer, p in params.items()}
  assert shapes == _mnist_param_shapes(name)
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(params)) == count
  out = taps.tap_gradients(model, variables, x, jnp.array([3, 8]))
  assert out.logits.shape == (2, 10) and out.input_grad.shape == (2, 28, 28, 1)
  expected_activations = ({"relu1": (2, 28, 28, 32), "relu2": (2, 14, 14, 64),
                           "relu3": (2, 1024)} if name == "cnn" else
                          {"relu1": (2, 2500), "relu2": (2, 1500), "relu3": (2, 500)})
  assert {k: v.shape for k, v in out.activations.items()} == expected_activations
  assert set(out.bias_grads) == {f"{layer}/bias" for layer in shapes}
  np.testing.assert_allclose(out.logits, model.apply(variables, x), rtol=1e-6, atol=1e-6)


def test_cnn_width_options_and_their_errors():
  model = models.get("cnn", num_classes=10, widths=(4, 6), hidden=16)
  variables = models.init(model, jax.random.key(0), (1, 28, 28, 1))
  shapes = {layer: (p["kernel"].shape, p["bias"].shape)
            for layer, p in variables["params"].items()}
  assert shapes == _mnist_param_shapes("cnn", widths=(4, 6), hidden=16)
  assert models.get("cnn") == models.get("cnn", widths=(32, 64), hidden=1024)
  with pytest.raises(ValueError, match="widths must have 2 entries"):
    models.init(models.get("cnn", widths=(4, 6, 8)), jax.random.key(0), (1, 28, 28, 1))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cnn", "mlp"])
def test_every_registered_explainer_runs_on_the_mnist_models(name):
  """Every `explain.METHODS` entry at 28x28x1; the MLP has no spatial layer for the layer
  methods (Grad-CAM, guided Grad-CAM, layer SHAP), which say so."""
  from xai_jax import explain  # pylint: disable=import-outside-toplevel
  from xai_jax.explain import full_gradient  # pylint: disable=import-outside-toplevel
  model = models.get(name, num_classes=10)
  variables = models.init(model, jax.random.key(0), (1, 28, 28, 1))
  x = jax.random.uniform(jax.random.key(1), (2, 28, 28, 1))
  target = jnp.array([3, 7])
  key = jax.random.key(2)
  baselines = 0.1 * jax.random.normal(key, (2, 28, 28, 1))
  grid = np.repeat(np.repeat(np.arange(16).reshape(4, 4), 7, axis=0), 7, axis=1)
  options = {
      "integrated_gradients": dict(steps=2), "smoothgrad": dict(key=key, samples=2),
      "gradient_shap": dict(baselines=baselines, key=key, samples=2),
      "deeplift_shap": dict(baselines=baselines), "random": dict(key=key),
      "occlusion": dict(sliding_window_shapes=(7, 7), strides=7),
      "feature_ablation": dict(feature_mask=grid),
      "shapley_sampling": dict(feature_mask=grid, samples=2, key=key),
      "lime": dict(feature_mask=grid, samples=8, key=key),
      "kernel_shap": dict(feature_mask=grid, samples=8, key=key),
      "layer_shap": dict(background=baselines, samples=2, key=key),
  }
  layer_methods = ("gradcam", "guided_gradcam", "layer_shap")
  map_methods = ("gradcam", "fullgrad", "simple_fullgrad", "deepmaps", "random", "edge")
  for method in explain.METHODS:
    if name == "mlp" and method in layer_methods:
      with pytest.raises(ValueError, match="no default Grad-CAM layer"):
        explain.explain(method, model, variables, x, target, **options.get(method, {}))
      continue
    out = np.asarray(explain.explain(method, model, variables, x, target,
                                     **options.get(method, {})))
    assert out.shape == (x.shape[:3] if method in map_methods else x.shape), method
    assert np.isfinite(out).all() and np.abs(out).max() > 0, method
  _, _, relative_error = full_gradient.fullgrad_completeness(model, variables, x, target)
  assert np.max(relative_error) < 1e-3, relative_error
