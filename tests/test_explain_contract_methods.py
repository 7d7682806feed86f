"""DeepLift, DeepLiftShap, guided backprop, deconvolution, Grad-CAM, FullGrad, DeepMaps (no torch).

Closed forms on tiny contract models defined here:
  * Dense1:  logits = relu(flat(x) @ A + a) @ B + c
      DeepLift: attr = Δx * (A diag(Δrelu / Δz) B[:, t]); guided backprop:
      A (1[z > 0] max(B[:, t], 0)); deconvolution: A max(B[:, t], 0).
  * ConvGap: logits = mean_hw(relu(conv3x3/2(x) + b)) @ D + d
      dlogit_t / dA[h, w, c] = D[c, t] / (h w), so Grad-CAM, FullGrad's bias
      terms and DeepMaps' layer map are explicit in the activation (numpy conv).
  * PoolNet: logits = flat(maxpool3x3/2 pad 1(x)) @ P, for the max-pool rule
      against a plain-loop implementation of Captum's rule (windows overlap).
Plus DeepLift and FullGrad completeness (float64) on VGG11, AlexNet and ResNet18
with random weights, nonzero biases and random batch-norm statistics; jit == eager,
vmap == loop, batch == loop and batch independence.
"""

import importlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import explain, models
from xai_jax.explain import postprocess
from xai_jax.models import layers, taps

dl = importlib.import_module("xai_jax.explain.deeplift_rules")
guided = importlib.import_module("xai_jax.explain.guided")
cam = importlib.import_module("xai_jax.explain.cam")
fg = importlib.import_module("xai_jax.explain.full_gradient")
dm = importlib.import_module("xai_jax.explain.deep_maps")

H, W, C, K, HID = 6, 6, 2, 4, 8
RNG = np.random.default_rng(0)


class Dense1(nn.Module):
  num_classes: int = K
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  gradcam_layer = None

  @nn.compact
  def __call__(self, x, *, train=False):
    h = layers.Dense(HID, dtype=self.dtype, name="fc1")(x.reshape(x.shape[0], -1))
    h = taps.activation(self, "relu1", self.ops.relu(h))
    return layers.Dense(self.num_classes, dtype=self.dtype, name="fc2")(h)


class ConvGap(nn.Module):
  num_classes: int = K
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  gradcam_layer = "relu1"

  @nn.compact
  def __call__(self, x, *, train=False):
    z = layers.Conv(5, 3, stride=2, padding=1, dtype=self.dtype, name="conv")(x)
    a = taps.activation(self, "relu1", self.ops.relu(z))
    return layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(jnp.mean(a, axis=(1, 2)))


class PoolNet(nn.Module):
  num_classes: int = K
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  gradcam_layer = None

  @nn.compact
  def __call__(self, x, *, train=False):
    p = self.ops.max_pool(x, window=3, stride=2, padding=1)
    kernel = self.param("kernel", nn.initializers.normal(1.0), (p[0].size, self.num_classes))
    return p.reshape(p.shape[0], -1) @ kernel.astype(p.dtype)


def _init(model, shape=(1, H, W, C), seed=0):
  return models.init(model, jax.random.key(seed), shape)


def _images(n, seed, scale=1.0, shape=(H, W, C)):
  return (scale * np.random.default_rng(seed).normal(size=(n,) + shape)).astype(np.float32)


def _p(v, *path):
  out = v["params"]
  for k in path:
    out = out[k]
  return np.asarray(out, np.float64)


def _conv_numpy(x, kernel, bias, stride, pad):
  """Plain-loop conv, x [N, H, W, Cin], kernel [k, k, Cin, Cout] -> [N, h, w, Cout]."""
  k = kernel.shape[0]
  xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  ho = (x.shape[1] + 2 * pad - k) // stride + 1
  wo = (x.shape[2] + 2 * pad - k) // stride + 1
  out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
  for i in range(ho):
    for j in range(wo):
      patch = xp[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
      out[:, i, j] = np.einsum("nabc,abcd->nd", patch, kernel) + bias
  return out


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.abs(a - b).max() / np.abs(b).max()


# ---------------------------------------------------------------------------
# Closed forms.
# ---------------------------------------------------------------------------


def test_deeplift_closed_form_one_hidden_layer():
  model = Dense1()
  v = _init(model)
  x, r = _images(3, 1), _images(3, 2, 0.5)
  t = np.array([0, 2, 3])
  a_mat, a_b, b_mat, = _p(v, "fc1", "kernel"), _p(v, "fc1", "bias"), _p(v, "fc2", "kernel")
  xf, rf = x.reshape(3, -1).astype(np.float64), r.reshape(3, -1).astype(np.float64)
  z, zr = xf @ a_mat + a_b, rf @ a_mat + a_b
  mult = (np.maximum(z, 0) - np.maximum(zr, 0)) / (z - zr)
  expected = (xf - rf) * np.einsum("ij,nj,jn->ni", a_mat, mult, b_mat[:, t])
  attr, delta = dl.deeplift(model, v, x, t, baseline=r, return_delta=True)
  np.testing.assert_allclose(attr.reshape(3, -1), expected, rtol=1e-4, atol=1e-6)
  assert np.abs(delta).max() < 1e-5
  # Captum-compat changes nothing here: no chained ops, no max-pool.
  np.testing.assert_allclose(dl.deeplift(model, v, x, t, baseline=r, captum_compat=True),
                             attr, rtol=1e-6, atol=1e-7)


@pytest.mark.slow
def test_guided_backprop_and_deconvolution_closed_form():
  model = Dense1()
  v = _init(model)
  x, t = _images(3, 3), np.array([1, 0, 3])
  a_mat, a_b, b_mat = _p(v, "fc1", "kernel"), _p(v, "fc1", "bias"), _p(v, "fc2", "kernel")
  z = x.reshape(3, -1) @ a_mat + a_b
  pos = np.maximum(b_mat[:, t].T, 0)  # [N, HID]
  gbp = np.einsum("ij,nj->ni", a_mat, (z > 0) * pos)
  deconv = np.einsum("ij,nj->ni", a_mat, pos)
  np.testing.assert_allclose(guided.guided_backprop(model, v, x, t).reshape(3, -1), gbp,
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(guided.deconvolution(model, v, x, t).reshape(3, -1), deconv,
                             rtol=1e-5, atol=1e-6)
  # ...and the ordinary gradient keeps negative B entries (guided really differs).
  plain = jax.grad(lambda xx: jnp.sum(model.apply(v, xx)[jnp.arange(3), t]))(jnp.asarray(x))
  assert _rel(plain.reshape(3, -1), gbp) > 1e-2


def _convgap_setup(n=2, seed=4):
  model = ConvGap()
  v = _init(model, (1, 8, 8, 3), seed=1)
  x = _images(n, seed, shape=(8, 8, 3))
  t = np.array([2, 0, 1][:n])
  kernel, bias = _p(v, "conv", "kernel"), _p(v, "conv", "bias")
  dense, dense_b = _p(v, "fc", "kernel"), _p(v, "fc", "bias")
  z = _conv_numpy(x.astype(np.float64), kernel, bias, 2, 1)  # [n, 4, 4, 5]
  act = np.maximum(z, 0)
  grad_act = dense[:, t].T[:, None, None, :] / (4 * 4)  # dlogit/dA, [n, 1, 1, 5]
  logits = act.mean(axis=(1, 2)) @ dense + dense_b
  return model, v, x, t, dict(z=z, act=act, grad_act=grad_act, logits=logits,
                               bias=bias, dense_b=dense_b)


@pytest.mark.slow
def test_gradcam_closed_form_raw_and_normalized():
  model, v, x, t, ref = _convgap_setup()
  small = np.sum(ref["act"] * ref["grad_act"], axis=-1)  # [n, 4, 4]
  rows = (np.arange(8) * 4) // 8  # torch nearest: floor(dst * in / out)
  nearest = small[:, rows][:, :, rows]
  np.testing.assert_allclose(cam.gradcam(model, v, x, t), nearest, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(cam.gradcam(model, v, x, t, relu=True), np.maximum(nearest, 0),
                             rtol=1e-5, atol=1e-6)
  bil = postprocess.resize_bilinear(jnp.asarray(small, jnp.float32), (8, 8))
  np.testing.assert_allclose(cam.gradcam(model, v, x, t, upsample="bilinear"), bil,
                             rtol=1e-5, atol=1e-6)
  relu = np.maximum(small, 0)
  lo = relu.min(axis=(1, 2), keepdims=True)
  normed = (relu - lo) / ((relu - lo).max(axis=(1, 2), keepdims=True) + 1e-7)
  expected = postprocess.resize_bilinear(jnp.asarray(normed, jnp.float32), (8, 8))
  np.testing.assert_allclose(cam.gradcam(model, v, x, t, mode="normalized"), expected,
                             rtol=1e-5, atol=1e-6)
  # Guided Grad-CAM = guided backprop x ReLU'd nearest map.
  gbp = guided.guided_backprop(model, v, x, t)
  np.testing.assert_allclose(cam.guided_gradcam(model, v, x, t),
                             gbp * np.maximum(nearest, 0)[..., None], rtol=1e-5, atol=1e-7)


def test_gradcam_at_a_linear_layers_output_closed_form():
  # At the conv's output z (before the ReLU): dlogit_t / dz = D[c, t] / (h w) * 1[z > 0],
  # so the map is sum_c mean_hw(that) * z_c, with z's negative values in it.
  model, v, x, t, ref = _convgap_setup()
  grad_z = ref["grad_act"] * (ref["z"] > 0)
  small = np.sum(grad_z.mean(axis=(1, 2), keepdims=True) * ref["z"], axis=-1)
  rows = (np.arange(8) * 4) // 8
  nearest = small[:, rows][:, :, rows]
  np.testing.assert_allclose(cam.gradcam(model, v, x, t, layer="conv"), nearest,
                             rtol=1e-5, atol=1e-6)
  gbp = guided.guided_backprop(model, v, x, t)
  np.testing.assert_allclose(cam.guided_gradcam(model, v, x, t, layer="conv"),
                             gbp * np.maximum(nearest, 0)[..., None], rtol=1e-5, atol=1e-7)
  act, grad = cam.layer_gradient(model, v, jnp.asarray(x), jnp.asarray(t), "conv")
  np.testing.assert_allclose(act, ref["z"], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, np.broadcast_to(grad_z, act.shape), rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match=r"unknown layer 'nope'; valid activation names: "
                     r"relu1; or a linear layer's output: conv, fc"):
    cam.gradcam(model, v, x, t, layer="nope")


def _post(a):
  a = np.abs(a)
  axes = tuple(range(1, a.ndim))
  a = a - a.min(axis=axes, keepdims=True)
  return a / (a.max(axis=axes, keepdims=True) + 1e-6)


@pytest.mark.slow
def test_fullgrad_closed_form_and_completeness():
  model, v, x, t, ref = _convgap_setup()
  grad_x = jax.grad(lambda xx: jnp.sum(model.apply(v, xx)[jnp.arange(2), t]))(jnp.asarray(x))
  input_term = x * np.asarray(grad_x, np.float64)
  grad_z = (ref["z"] > 0) * ref["grad_act"]  # gradient at the conv bias site
  bias_term = grad_z * ref["bias"]
  up = postprocess.resize_bilinear(jnp.asarray(_post(bias_term), jnp.float32), (8, 8),
                                   align_corners=True)
  expected = _post(input_term).sum(-1) + np.asarray(up).sum(-1)
  np.testing.assert_allclose(fg.fullgrad(model, v, x, t), expected, rtol=1e-5, atol=1e-5)
  simple_up = postprocess.resize_bilinear(jnp.asarray(_post(grad_z), jnp.float32), (8, 8),
                                          align_corners=True)
  np.testing.assert_allclose(fg.simple_fullgrad(model, v, x, t),
                             _post(input_term).sum(-1) + np.asarray(simple_up).sum(-1),
                             rtol=1e-5, atol=1e-5)
  lhs, rhs, rel = fg.fullgrad_completeness(model, v, x, t)
  logit = ref["logits"][np.arange(2), t]
  np.testing.assert_allclose(rhs, logit, rtol=1e-5)
  explicit = input_term.sum((1, 2, 3)) + bias_term.sum((1, 2, 3)) + ref["dense_b"][t]
  np.testing.assert_allclose(lhs, explicit, rtol=1e-4)
  assert np.max(rel) < 1e-4


@pytest.mark.slow
def test_deepmaps_closed_form_and_layers():
  model, v, x, t, ref = _convgap_setup()
  grad_x = jax.grad(lambda xx: jnp.sum(model.apply(v, xx)[jnp.arange(2), t]))(jnp.asarray(x))
  a0 = (x * np.asarray(grad_x, np.float64)).sum(-1)
  a1 = (ref["act"] * ref["grad_act"]).sum(-1)

  def psi(a):
    a = np.abs(a)
    a = a - a.min(axis=(1, 2), keepdims=True)
    a = a / a.max(axis=(1, 2), keepdims=True)
    return np.asarray(postprocess.resize_bilinear(jnp.asarray(a, jnp.float32), (8, 8),
                                                  align_corners=True))

  assert dm.layer_names(model, v, x) == ("input", "relu1")
  # ConvGap declares no deepmaps_layers: the default is every hidden layer (Eq. 8, l_0 = 1).
  np.testing.assert_allclose(dm.deepmaps(model, v, x, t), psi(a1), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dm.deepmaps(model, v, x, t, layers="all"), psi(a0) + psi(a1),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dm.deepmaps(model, v, x, t, first_layer=0), psi(a0) + psi(a1),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(dm.deepmaps(model, v, x, t, first_layer=1), psi(a1), rtol=1e-4,
                             atol=1e-5)
  per_layer = dm.layer_attributions(model, v, x, t)
  assert list(per_layer) == ["input", "relu1"]
  np.testing.assert_allclose(per_layer["relu1"], psi(a1), rtol=1e-4, atol=1e-5)
  # Appendix D: Psi per channel, then the channel sum.
  per_ch = ref["act"] * ref["grad_act"]
  expected = sum(psi(per_ch[..., c]) for c in range(5))
  np.testing.assert_allclose(dm.deepmaps(model, v, x, t, first_layer=1, per_channel=True),
                             expected, rtol=1e-4, atol=1e-5)
  signed = dm.layer_attributions(model, v, x, t, normalize=False)["relu1"]
  np.testing.assert_allclose(
      signed, postprocess.resize_bilinear(jnp.asarray(a1, jnp.float32), (8, 8),
                                          align_corners=True), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------
# The max-pool rule against a plain loop (overlapping windows, ties, Δ = 0).
# ---------------------------------------------------------------------------


def _windows(h, w, k=3, s=2, p=1):
  ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
  for oh in range(ho):
    for ow in range(wo):
      cells = [(oh * s + di - p, ow * s + dj - p) for di in range(k) for dj in range(k)]
      yield oh, ow, [(i, j) for i, j in cells if 0 <= i < h and 0 <= j < w]


def _argmax(img, cells):
  values = [img[c] for c in cells]
  return cells[int(np.argmax(values))]  # first maximum in row-major order


def _pool_multipliers_loop(x, r, g, compat, eps=1e-10):
  """Captum's maxpool rule; g [N, ho, wo, C] output gradient (same for both halves)."""
  n, h, w, c = x.shape
  mult = np.zeros_like(x)
  ordinary = np.zeros_like(x)  # autograd gradient of the x half
  for b in range(n):
    for ch in range(c):
      xi, ri = x[b, :, :, ch], r[b, :, :, ch]
      s_x, s_r = {}, {}
      for oh, ow, cells in _windows(h, w):
        ix, ir = _argmax(xi, cells), _argmax(ri, cells)
        o, o_r = xi[ix], ri[ir]
        top = max(o, o_r)
        gw = g[b, oh, ow, ch]
        ordinary[b][ix + (ch,)] += gw
        if compat:  # max_unpool2d: the last window writing a cell wins
          s_x[ix] = gw * (top - o_r)
          s_r[ir] = gw * (o - top)
        else:
          s_x[ix] = s_x.get(ix, 0.0) + gw * (top - o_r)
          s_r[ir] = s_r.get(ir, 0.0) + gw * (o - top)
      for i in range(h):
        for j in range(w):
          d = xi[i, j] - ri[i, j]
          if abs(d) >= eps:
            mult[b, i, j, ch] = (s_x.get((i, j), 0.0) + s_r.get((i, j), 0.0)) / d
  fallback = np.broadcast_to(ordinary[:1], x.shape) if compat else ordinary
  small = np.abs(x - r) < eps
  return np.where(small, fallback, mult)


@pytest.mark.slow
@pytest.mark.parametrize("compat", [False, True])
def test_maxpool_rule_against_loop(compat):
  with jax.enable_x64(True):
    model = PoolNet(dtype=jnp.float64)
    v = jax.tree.map(lambda a: a.astype(jnp.float64), _init(model, (1, 7, 7, 2), seed=3))
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3, 7, 7, 2))
    r = 0.5 * rng.normal(size=(3, 7, 7, 2))
    r[:, 2:4, 1:5] = x[:, 2:4, 1:5]  # Δ = 0: the fallback branch
    x[0, 0, 0:3, 0] = 5.0  # ties inside overlapping windows
    r[1, 4:7, 4, 1] = 3.0
    t = np.array([0, 1, 3])
    mult, _ = dl.deeplift_multipliers(model, v, jnp.asarray(x), jnp.asarray(r),
                                      jnp.asarray(t), captum_compat=compat)
    kernel = np.asarray(v["params"]["kernel"])
    g = kernel[:, t].T.reshape(3, 4, 4, 2)
    expected = _pool_multipliers_loop(x, r, g, compat)
    np.testing.assert_allclose(mult, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_compat_breaks_completeness_only_where_captum_does():
  """ReLU -> MaxPool chains (the small CNN): compat follows Captum's hook order."""
  model = models.get("cnn", num_classes=K)
  v = _init(model, (1, 8, 8, 3))
  x, r, t = _images(2, 6, shape=(8, 8, 3)), _images(2, 7, 0.5, (8, 8, 3)), np.array([0, 1])
  _, exact = dl.deeplift(model, v, x, t, baseline=r, return_delta=True)
  _, quirk = dl.deeplift(model, v, x, t, baseline=r, captum_compat=True, return_delta=True)
  delta_f = np.asarray(models.as_apply(model)(v, x) - models.as_apply(model)(v, r))[[0, 1], t]
  assert np.max(np.abs(exact) / np.abs(delta_f)) < 1e-4
  assert np.max(np.abs(quirk) / np.abs(delta_f)) > 1e-3


# ---------------------------------------------------------------------------
# Completeness on the torchvision architectures (random weights, nonzero biases).
# ---------------------------------------------------------------------------


def _random_variables(variables, seed):
  """Random nonzero biases and batch-norm parameters / running statistics."""
  flat = jax.tree_util.tree_flatten_with_path(variables)[0]
  rng = np.random.default_rng(seed)
  out = {}
  for path, leaf in flat:
    keys = tuple(p.key for p in path)
    a = np.asarray(leaf)
    if keys[-1] == "bias":
      a = 0.1 * rng.normal(size=a.shape)
    elif keys[-1] == "scale":
      a = 1 + 0.2 * rng.normal(size=a.shape)
    elif keys[-1] == "mean":
      a = 0.1 * rng.normal(size=a.shape)
    elif keys[-1] == "var":
      a = 0.5 + rng.uniform(size=a.shape)
    out[keys] = a
  from flax import traverse_util
  return traverse_util.unflatten_dict(out)


@pytest.mark.slow
@pytest.mark.parametrize("name,size", [("vgg11", 32), ("alexnet", 64), ("resnet18", 32)])
def test_deeplift_completeness_torchvision_architectures(name, size):
  with jax.enable_x64(True):
    model = models.get(name, num_classes=5, dtype=jnp.float64)
    v = _random_variables(models.init(models.get(name, num_classes=5), jax.random.key(0),
                                      (1, size, size, 3)), seed=1)
    v = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)
    x = jnp.asarray(_images(2, 8, shape=(size, size, 3)), jnp.float64)
    r = jnp.asarray(_images(2, 9, 0.3, (size, size, 3)), jnp.float64)
    t = np.array([1, 4])
    attr, delta = dl.deeplift(model, v, x, t, baseline=r, return_delta=True)
    logits = models.as_apply(model)(v, jnp.concatenate([x, r]))
    delta_f = np.asarray(logits[:2] - logits[2:])[[0, 1], t]
    assert attr.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(attr).sum((1, 2, 3)), delta_f, rtol=1e-5)
    assert np.max(np.abs(delta) / np.abs(delta_f)) < 1e-5
    lhs, rhs, rel = fg.fullgrad_completeness(model, v, x, t)
    np.testing.assert_allclose(rhs, np.asarray(logits[:2])[[0, 1], t], rtol=1e-12)
    assert np.max(rel) < 1e-4


# ---------------------------------------------------------------------------
# DeepLiftShap, transforms, batching.
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_deeplift_shap_is_mean_over_baselines():
  model = models.get("cnn", num_classes=K)
  v = _init(model, (1, 8, 8, 3))
  x, refs, t = _images(2, 11, shape=(8, 8, 3)), _images(3, 12, 0.5, (8, 8, 3)), np.array([3, 0])
  loop = [dl.deeplift(model, v, x, t, baseline=refs[j:j + 1], return_delta=True)
          for j in range(3)]
  for chunk in (None, 2):
    mean, delta = dl.deeplift_shap(model, v, x, t, baselines=refs, chunk=chunk,
                                   return_delta=True)
    np.testing.assert_allclose(mean, sum(a for a, _ in loop) / 3, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(delta, np.stack([d for _, d in loop], axis=1), atol=1e-5)
  with pytest.raises(ValueError, match="more than one baseline"):
    dl.deeplift_shap(model, v, x, t, baselines=refs[:1])


def _cnn():
  model = models.get("cnn", num_classes=K)
  return model, _init(model, (1, 8, 8, 3))


METHODS = {
    "deeplift": lambda m, v, x, t: dl.deeplift(m, v, x, t, baseline=0.1),
    "deeplift_compat": lambda m, v, x, t: dl.deeplift(m, v, x, t, baseline=0.1,
                                                      captum_compat=True),
    "guided_backprop": guided.guided_backprop,
    "deconvolution": guided.deconvolution,
    "gradcam": lambda m, v, x, t: cam.gradcam(m, v, x, t, mode="normalized"),
    "guided_gradcam": cam.guided_gradcam,
    "fullgrad": fg.fullgrad,
    "deepmaps": dm.deepmaps,
}


LOOPED = ("deeplift", "guided_backprop", "gradcam", "fullgrad", "deepmaps")


@pytest.mark.slow
def test_jit_equals_eager_and_batch_equals_loop():
  model, v = _cnn()
  x, t = _images(3, 13, shape=(8, 8, 3)), np.array([0, 2, 1])
  other = _images(3, 14, shape=(8, 8, 3))
  for name, fn in METHODS.items():
    batch = np.asarray(fn(model, v, x, t))
    with jax.disable_jit():
      eager = np.asarray(fn(model, v, x[:2], t[:2]))
    np.testing.assert_allclose(eager, batch[:2], rtol=2e-4, atol=1e-6, err_msg=name)
    if name in LOOPED:  # one batch-1 compilation per module is enough
      loop = np.concatenate([np.asarray(fn(model, v, x[i:i + 1], t[i:i + 1]))
                             for i in range(3)])
      np.testing.assert_allclose(loop, batch, rtol=2e-4, atol=1e-6, err_msg=name)
    # Batch independence: image 0's result does not depend on the other images.
    mixed = np.asarray(fn(model, v, np.concatenate([x[:1], other[1:]]), t))
    np.testing.assert_allclose(mixed[0], batch[0], rtol=2e-4, atol=1e-6, err_msg=name)


@pytest.mark.slow
def test_vmap_equals_loop_for_plain_functions():
  model, v = _cnn()
  x, t = jnp.asarray(_images(3, 15, shape=(8, 8, 3))), jnp.array([1, 0, 2])
  r = jnp.zeros_like(x)

  def one_dl(xi, ri, ti):
    return dl.deeplift_multipliers(model, v, xi[None], ri[None], ti[None])[0][0]

  def one_cam(xi, ti):
    act, grad = cam.layer_gradient(model, v, xi[None], ti[None], "relu2")
    return cam.layer_gradcam(act, grad)[0]

  def one_terms(xi, ti):
    return fg.fullgrad_terms(model, v, xi[None], ti[None])[1][0]

  for fn, args in ((one_dl, (x, r, t)), (one_cam, (x, t)), (one_terms, (x, t))):
    batched = jax.jit(jax.vmap(fn))(*args)
    single = jax.jit(fn)
    loop = jnp.stack([single(*(a[i] for a in args)) for i in range(3)])
    np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_registry_and_errors():
  model, v = _cnn()
  x = _images(2, 16, shape=(8, 8, 3))
  for name in ("deeplift", "deeplift_shap", "guided_backprop", "deconvolution", "gradcam",
               "guided_gradcam", "fullgrad", "simple_fullgrad", "deepmaps"):
    assert name in explain.METHODS, name
  np.testing.assert_allclose(explain.explain("gradcam", model, v, x, None),
                             cam.gradcam(model, v, x, None))
  with pytest.raises(ValueError, match="contract model"):
    dl.deeplift(models.as_apply(model), v, x, 0)
  with pytest.raises(ValueError, match="unknown layer"):
    cam.gradcam(model, v, x, 0, layer="nope")
  with pytest.raises(ValueError, match="unknown mode"):
    cam.gradcam(model, v, x, 0, mode="fancy")
  with pytest.raises(ValueError, match="spatial layer"):
    cam.gradcam(model, v, x, 0, layer="relu3")
  with pytest.raises(ValueError, match="first_layer"):
    dm.deepmaps(model, v, x, 0, first_layer=3)
  with pytest.raises(ValueError, match="eps"):
    dl.deeplift(model, v, x, 0, eps=0.0)
  with pytest.raises(ValueError, match="baseline"):
    dl.deeplift(model, v, x, 0, baseline=np.zeros((3, 8, 8, 3), np.float32))
