"""Layer SHAP: closed forms on a linear head, the map, the guided product, shap parity.

Without torch (float64), on LinearHead (conv3x3/2 + bias, ReLU = layer "relu1",
NCHW flatten, dense): the target logit is linear in the layer's activation
`h`, with gradient `w_t` (the dense column, reshaped), so
  * layer space: expected gradients are `w_t * (h~(x) - mean_s h(b_s))`, which
    with background indices that visit every background image equally often is
    `w_t * (h(x) - E[h(background)])` exactly (plus `w_t * local_smoothing *
    mean_s noise_s` with injected noise);
  * input space (shap's PyTorch layer mode): `w_t * mean_s h(x_s)` with
    `x_s = alpha_s x + (1 - alpha_s) b_s`, `h` computed by a NumPy conv;
  * `layer_shap` is the channel sum resized to the input (bilinear), times
    guided backprop when `guided=True`.
With torch (marked torch/parity/slow): `shap.GradientExplainer` 0.51 on
torchvision VGG11 (random weights, 3 classes, 32x32, float64 in both, so
that no max-pool near-tie flips) with shap's numpy draws (and its torch noise
for `local_smoothing`) replayed from the same seeds: in layer space against
the explainer on the sub-network after the layer (shap's TensorFlow usage:
the model from the layer's input to the output, data = the layer's
activations), and in input space against `GradientExplainer((net, layer))`.
"""

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from xai_jax import explain, models
from xai_jax.explain import postprocess
from xai_jax.models import layers, taps
import narrow_nets  # noqa: E402

K, H, W, C, M = 3, 6, 6, 2, 4


class LinearHead(nn.Module):
  """conv3x3/2 p1 (3 channels) + ReLU ("relu1"), NCHW flatten, dense K."""
  num_classes: int = K
  dtype: Any = jnp.float32
  ops: taps.Ops = taps.DEFAULT_OPS
  gradcam_layer = "relu1"

  @nn.compact
  def __call__(self, x, *, train=False):
    z = layers.Conv(3, 3, stride=2, padding=1, dtype=self.dtype, name="conv")(x)
    h = taps.activation(self, "relu1", self.ops.relu(z))
    return layers.Dense(self.num_classes, dtype=self.dtype, name="fc")(layers.flatten_nchw(h))


def _conv_relu(x, kernel, bias):
  """NumPy relu(conv3x3 stride 2 pad 1), NHWC."""
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  ho = (x.shape[1] - 1) // 2 + 1
  out = np.zeros((x.shape[0], ho, ho, kernel.shape[3]))
  for i in range(ho):
    for j in range(ho):
      out[:, i, j] = np.einsum("nabc,abcd->nd", xp[:, 2 * i:2 * i + 3, 2 * j:2 * j + 3],
                               kernel) + bias
  return np.maximum(out, 0)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max() / np.abs(b).max())


@functools.lru_cache(maxsize=None)
def _setup():
  with jax.enable_x64(True):
    model = LinearHead(dtype=jnp.float64)
    variables = jax.tree_util.tree_map(
        lambda a: jnp.asarray(a, jnp.float64), models.init(model, jax.random.key(0),
                                                           (1, H, W, C)))
  rng = np.random.default_rng(1)
  x = rng.normal(size=(2, H, W, C))
  background = rng.normal(size=(M, H, W, C))
  t = np.array([2, 0])
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  # d logit_t / d h: the dense column in NCHW order, back to NHWC.
  w_t = np.stack([p["fc"]["kernel"][:, k].reshape(3, 3, 3).transpose(1, 2, 0) for k in t])
  h = lambda images: _conv_relu(images, p["conv"]["kernel"], p["conv"]["bias"])
  return model, variables, x, background, t, w_t, h


def _draws(samples, seed):
  """Indices visiting every background image samples // M times; arbitrary alphas."""
  rng = np.random.default_rng(seed)
  indices = np.stack([rng.permutation(np.tile(np.arange(M), samples // M)) for _ in range(2)])
  return indices, rng.uniform(size=(2, samples))


@pytest.mark.slow
def test_layer_space_is_w_times_activation_minus_background_mean():
  model, variables, x, background, t, w_t, h = _setup()
  indices, alphas = _draws(8, 2)
  with jax.enable_x64(True):
    phi = explain.layer_expected_gradients(model, variables, x, t, background=background,
                                           samples=8, alphas=alphas, background_indices=indices)
  expected = w_t * (h(x) - h(background).mean(axis=0))
  assert phi.shape == (2, 3, 3, 3) and phi.dtype == jnp.float64
  assert _rel(phi, expected) < 1e-12
  # Local smoothing adds local_smoothing * mean noise (injected, activation-shaped).
  noise = np.random.default_rng(3).normal(size=(2, 8, 3, 3, 3))
  with jax.enable_x64(True):
    smoothed = explain.layer_expected_gradients(
        model, variables, x, t, background=background, samples=8, alphas=alphas,
        background_indices=indices, local_smoothing=0.3, noise=noise)
  assert _rel(smoothed, expected + w_t * 0.3 * noise.mean(axis=1)) < 1e-12


def test_input_space_is_shaps_pytorch_layer_mode():
  model, variables, x, background, t, w_t, h = _setup()
  indices, alphas = _draws(4, 4)
  with jax.enable_x64(True):
    phi = explain.layer_expected_gradients(model, variables, x, t, background=background,
                                           samples=4, alphas=alphas, background_indices=indices,
                                           space="input")
  a = alphas[..., None, None, None]
  points = a * x[:, None] + (1 - a) * background[indices]  # [N, S, H, W, C]
  acts = h(points.reshape((-1, H, W, C))).reshape((2, 4, 3, 3, 3))
  assert _rel(phi, w_t * acts.mean(axis=1)) < 1e-12
  # Local smoothing noises the image before interpolating (image-shaped noise).
  noise = np.random.default_rng(6).normal(size=(2, 4, H, W, C))
  with jax.enable_x64(True):
    smoothed = explain.layer_expected_gradients(
        model, variables, x, t, background=background, samples=4, alphas=alphas,
        background_indices=indices, space="input", local_smoothing=0.5, noise=noise)
  points = a * (x[:, None] + 0.5 * noise) + (1 - a) * background[indices]
  acts = h(points.reshape((-1, H, W, C))).reshape((2, 4, 3, 3, 3))
  assert _rel(smoothed, w_t * acts.mean(axis=1)) < 1e-12


@pytest.mark.parametrize("upsample", ["bilinear", "nearest"])
def test_map_is_resized_channel_sum_and_guided_multiplies_guided_backprop(upsample):
  model, variables, x, background, t, _, _ = _setup()
  indices, alphas = _draws(4, 5)
  draws = dict(background=background, samples=4, alphas=alphas, background_indices=indices)
  with jax.enable_x64(True):
    phi = explain.layer_expected_gradients(model, variables, x, t, **draws)
    plain = explain.layer_shap(model, variables, x, t, guided=False, upsample=upsample, **draws)
    guided = explain.explain("layer_shap", model, variables, x, t, upsample=upsample, **draws)
    gbp = explain.guided_backprop(model, variables, x, t)
    want = postprocess.resize(np.asarray(phi).sum(axis=-1), (H, W), mode=upsample)
  assert plain.shape == (2, H, W) and _rel(plain, want) < 1e-12
  assert guided.shape == (2, H, W, C)
  assert _rel(guided, np.asarray(gbp) * np.asarray(want)[..., None]) < 1e-12
  if upsample == "bilinear":  # half-pixel bilinear: a 3x3 map at 6x6 is not piecewise constant
    assert np.abs(np.diff(np.asarray(plain)[:, 0, :2], axis=-1)).max() > 0


@pytest.mark.slow
def test_key_draws_are_reproducible_and_chunking_does_not_change_the_sum():
  model, variables, x, background, t, _, _ = _setup()
  key = jax.random.key(9)
  run = functools.partial(explain.layer_shap, model, variables, x, t, background=background,
                          samples=6, key=key, local_smoothing=0.1)
  with jax.enable_x64(True):
    first = np.asarray(run())
    np.testing.assert_array_equal(np.asarray(run()), first)
    for chunk, loop in ((1, "python"), (4, "lax"), (6, "python")):
      np.testing.assert_allclose(run(chunk=chunk, loop=loop), first, rtol=1e-12, atol=1e-15)
    assert _rel(run(key=jax.random.key(10)), first) > 1e-3


def test_errors():
  model = models.get("cnn", num_classes=K)
  variables = jax.eval_shape(lambda: models.init(model, jax.random.key(0), (1, 8, 8, 3)))
  x = np.zeros((2, 8, 8, 3), np.float32)
  bg = np.zeros((3, 8, 8, 3), np.float32)
  t = np.array([0, 1])
  key = jax.random.key(0)
  run = functools.partial(explain.layer_shap, model, variables, x, t)
  with pytest.raises(ValueError, match=r"background must be \[M, 8, 8, 3\]"):
    run(background=bg[..., :1], key=key)
  with pytest.raises(ValueError, match="unknown layer 'relu9'"):
    run(background=bg, key=key, layer="relu9")
  with pytest.raises(ValueError, match="needs a spatial layer"):
    run(background=bg, key=key, layer="relu3")
  with pytest.raises(ValueError, match="key is required"):
    run(background=bg)
  with pytest.raises(ValueError, match=r"background_indices must lie in \[0, 3\)"):
    run(background=bg, samples=2, alphas=np.zeros((2, 2)),
        background_indices=np.array([[0, 3], [1, 1]]))
  with pytest.raises(ValueError, match=r"alphas must be float \[2, 2\]"):
    run(background=bg, samples=2, key=key, alphas=np.zeros((2, 3)))
  with pytest.raises(ValueError, match="unknown space 'pixels'"):
    run(background=bg, key=key, space="pixels")
  with pytest.raises(ValueError, match="unknown upsample 'cubic'"):
    run(background=bg, key=key, upsample="cubic")
  with pytest.raises(ValueError, match="local_smoothing must be >= 0"):
    run(background=bg, key=key, local_smoothing=-1.0)
  with pytest.raises(ValueError, match=r"key must be a jax.random.key"):
    run(background=bg, key=0)
  with pytest.raises(ValueError, match="layer_shap: unknown space"):
    explain.check_options("layer_shap", {"background": None, "space": "pixel"})
  with pytest.raises(ValueError, match="layer_shap: missing required options"):
    explain.check_options("layer_shap", {"key": None})


# ---------------------------------------------------------------------------
# shap parity (torch).
# ---------------------------------------------------------------------------

LAYER, INDEX = "features_9", 9  # VGG11's 4th conv ReLU: 8x8x256 at 32x32
SAMPLES, SEED, NOISE_SEED = 4, 123, 7


@pytest.fixture(scope="module")
def shap_vgg():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  shap = pytest.importorskip("shap")
  from xai_jax.models import port  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  net = narrow_nets.narrow_vgg(torchvision.models.vgg11(weights=None, num_classes=K)).eval()
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        module.bias.uniform_(-0.1, 0.1)
  variables = port.from_torchvision("vgg11", net.state_dict(),  # float32 weights, exactly
                                    classifier_width=narrow_nets.WIDTH)
  with jax.enable_x64(True):
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
  net = net.double()
  x, background = torch.rand(2, 3, 32, 32).double(), torch.rand(3, 3, 32, 32).double()
  return torch, shap, net, variables, x, background


def _replayed_draws(torch, n_background, target, noise_shape=None):
  """shap's draws. For each output class in turn, `np.random.seed(rseed)`, then per image,
  per sample: `choice`, `uniform` and, when smoothing, one torch normal tensor of the
  explained input's shape; numpy repeats for every class, torch's stream runs on, so the
  noise of image j is that of the pass for its target class."""
  rng = np.random.RandomState(SEED)
  indices, alphas = np.zeros((2, SAMPLES), np.int64), np.zeros((2, SAMPLES))
  for j in range(2):
    for s in range(SAMPLES):
      indices[j, s] = rng.choice(n_background)
      alphas[j, s] = rng.uniform()
  if noise_shape is None:
    return indices, alphas, None
  torch.manual_seed(NOISE_SEED)
  draw = lambda: torch.empty(noise_shape, dtype=torch.float64).normal_().numpy()
  noise = np.stack([[[draw() for _ in range(SAMPLES)] for _ in range(2)] for _ in range(K)])
  noise = noise[target, np.arange(2)]  # [N, S, C, h, w]
  return indices, alphas, np.moveaxis(noise, 2, -1)  # NCHW -> NHWC


def _shap_values(torch, explainer, inputs, smoothing):
  previous = torch.get_default_dtype()
  torch.set_default_dtype(torch.float64)  # shap allocates its sample buffers in the default
  try:
    if smoothing:
      torch.manual_seed(NOISE_SEED)
    return explainer.shap_values(inputs, nsamples=SAMPLES, rseed=SEED)  # [N, C, h, w, K]
  finally:
    torch.set_default_dtype(previous)


def _ours(variables, x, target, draws, **options):
  indices, alphas, noise = draws
  with jax.enable_x64(True):
    model = models.get("vgg11", num_classes=K, dtype=jnp.float64,
                       classifier_width=narrow_nets.WIDTH)
    xj = jnp.asarray(x.permute(0, 2, 3, 1).numpy())
    return explain.layer_expected_gradients(
        model, variables, xj, target, layer=LAYER, samples=SAMPLES, alphas=alphas,
        background_indices=indices, noise=noise, **options)


def _pick(values, target):
  return np.stack([values[j, ..., t] for j, t in enumerate(target)]).transpose(0, 2, 3, 1)


@pytest.mark.torch
@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("smoothing", [0.0, 0.3])
def test_layer_space_matches_shap_on_the_sub_network(shap_vgg, smoothing):
  torch, shap, net, variables, x, background = shap_vgg
  head = torch.nn.Sequential(*net.features[INDEX + 1:], net.avgpool, torch.nn.Flatten(),
                             *net.classifier).eval()
  with torch.no_grad():
    act_x, act_background = net.features[:INDEX + 1](x), net.features[:INDEX + 1](background)
  explainer = shap.GradientExplainer(head, act_background, local_smoothing=smoothing)
  values = _shap_values(torch, explainer, act_x, smoothing)
  target = np.array([2, 0])
  draws = _replayed_draws(torch, 3, target, tuple(act_x.shape[1:]) if smoothing else None)
  got = _ours(variables, x, target, draws, background=jnp.asarray(
      background.permute(0, 2, 3, 1).numpy()), local_smoothing=smoothing)
  assert _rel(got, _pick(values, target)) < 1e-10


@pytest.mark.torch
@pytest.mark.parity
@pytest.mark.slow
def test_input_space_matches_shaps_model_layer_mode(shap_vgg):
  torch, shap, net, variables, x, background = shap_vgg
  # shap hooks the module whose INPUT is the layer: the max-pool after ReLU features.9.
  explainer = shap.GradientExplainer((net, net.features[INDEX + 1]), background)
  values = _shap_values(torch, explainer, x, 0.0)
  target = np.array([1, 1])
  got = _ours(variables, x, target, _replayed_draws(torch, 3, target), space="input",
              background=jnp.asarray(background.permute(0, 2, 3, 1).numpy()))
  assert _rel(got, _pick(values, target)) < 1e-10
