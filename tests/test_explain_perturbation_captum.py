"""Parity of the perturbation explainers with Captum 0.9 and the `lime` package.

Network: the small CNN of `benchmarks/explainers.py` (conv-relu-pool x2, two dense layers) as
a torch twin with random weights (the last layer scaled by 30 so that perturbations move the
logits by O(0.1-1)), copied into `xai_jax.models.get("cnn")`, at 16x16 (64x64 for the lime
package: its quickshift, max_dist=200, merges everything in small images). Both frameworks run in
float64: attributions are differences of logits of nearly equal inputs, whose float32
rounding (which differs between XLA's and torch's convolutions) would not cancel.

Random draws are replayed, not re-derived: Captum's permutations (ShapleyValueSampling) and
interpretable samples (Lime, KernelShap) are recorded by wrapping its own generators and fed
to xai_jax as `permutations` / `coalitions`; the lime package's `data` matrix is recorded from
`LimeImageExplainer.data_labels`.

Error measure: max|a - b| / max|b| over the attributions. FeatureAblation and the lime package
compute in float64 throughout (measured ~1e-14; limit 1e-10). Captum casts some results to
float32: Occlusion divides in float32 and ShapleyValueSampling accumulates in float32
(measured 3e-8 to 5e-8; limit 1e-6), Lime and KernelShap fit their surrogates in float32 with
sklearn (Lasso, LinearRegression by a float32 SVD; measured 8e-8 to 8e-7; limit 1e-5).
"""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
captum_attr = pytest.importorskip("captum.attr")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from benchmarks import explainers as bench  # pylint: disable=g-import-not-at-top
from xai_jax import explain, models  # pylint: disable=g-import-not-at-top

pytestmark = [
    pytest.mark.torch, pytest.mark.parity, pytest.mark.slow,
    # Captum warns that a batch fits one surrogate per image (as intended here), and sklearn
    # that its float32 Lasso cannot reach the tightened tolerance (float32 rounding).
    pytest.mark.filterwarnings("ignore:You are providing multiple inputs:UserWarning"),
    pytest.mark.filterwarnings("ignore:Objective did not converge"),
]

BATCH, CLASSES, SIZE = 2, 10, 16


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  scale = np.max(np.abs(b))
  assert scale > 0, "the reference is all zeros: the comparison would prove nothing"
  return float(np.max(np.abs(a - b)) / scale)


def _nhwc(t):
  return t.detach().permute(0, 2, 3, 1).numpy()


def _nchw(a):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


@functools.lru_cache(maxsize=None)
def _setup(size=SIZE):
  """(torch net, flax model, float64 variables, x torch, x NHWC, target torch, target jax)."""
  torch.manual_seed(0)
  net = bench._torch_cnn(torch, size)  # pylint: disable=protected-access
  with torch.no_grad():
    net.fc2.weight.mul_(30.0)
  variables = bench._cnn_variables(net)  # pylint: disable=protected-access
  net = net.double()
  x = torch.randn(BATCH, 3, size, size, generator=torch.Generator().manual_seed(1)).double()
  with jax.enable_x64(True):
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    model = models.get("cnn", num_classes=CLASSES, dtype=jnp.float64)
    with torch.no_grad():
      logits = net(x)
    np.testing.assert_allclose(model.apply(variables, jnp.asarray(_nhwc(x))), logits.numpy(),
                               rtol=1e-12, atol=1e-12)
  target = logits.argmin(1)  # a target other than the arg-max
  return net, model, variables, x, _nhwc(x), target, target.numpy().astype(np.int32)


def _blocks(rows, cols, size=SIZE):
  """int [size, size]: a rows x cols grid of rectangular features, row-major ids."""
  r = np.arange(size) * rows // size
  c = np.arange(size) * cols // size
  return (r[:, None] * cols + c[None, :]).astype(np.int64)


@pytest.fixture(autouse=True)
def _float64():
  with jax.enable_x64(True):
    yield


@pytest.mark.parametrize("captum_window, captum_strides, window, strides", [
    ((3, 4, 4), (3, 2, 2), (4, 4), (2, 2)),       # over all channels, overlapping
    ((1, 3, 3), (1, 2, 2), (3, 3, 1), (2, 2, 1)),  # per channel, last window clipped
    ((2, 5, 3), (1, 4, 3), (5, 3, 2), (4, 3, 1)),  # partial channel windows
])
def test_occlusion(captum_window, captum_strides, window, strides):
  net, model, variables, x, xj, target, t = _setup()
  baseline = 0.5 * torch.randn(1, *x.shape[1:], generator=torch.Generator().manual_seed(2))
  baseline = baseline.double()
  ref = captum_attr.Occlusion(net).attribute(
      x, sliding_window_shapes=captum_window, strides=captum_strides, baselines=baseline,
      target=target, perturbations_per_eval=4)
  got = explain.occlusion(model, variables, xj, t, sliding_window_shapes=window,
                          strides=strides, baseline=_nhwc(baseline), chunk=5)
  assert _rel(got, _nhwc(ref)) < 1e-6  # Captum's result is float32


@pytest.mark.parametrize("mask_kind", ["shared", "per_image", "per_channel"])
def test_feature_ablation(mask_kind):
  net, model, variables, x, xj, target, t = _setup()
  grid = _blocks(4, 4)
  if mask_kind == "shared":
    mask = grid[None]                                    # xai_jax [1, H, W]
    captum_mask = torch.from_numpy(grid)[None, None]     # Captum [1, 1, H, W]
  elif mask_kind == "per_image":
    mask = np.stack([grid, _blocks(2, 3) + 20])          # other ids in image 1
    captum_mask = torch.from_numpy(mask)[:, None]
  else:
    mask = grid[None, :, :, None] * 3 + np.arange(3)     # [1, H, W, C]
    captum_mask = _nchw(mask)
  ref = captum_attr.FeatureAblation(net).attribute(
      x, baselines=0.25, target=target, feature_mask=captum_mask, perturbations_per_eval=3)
  got = explain.feature_ablation(model, variables, xj, t, feature_mask=mask, baseline=0.25,
                                 chunk=7)
  assert _rel(got, _nhwc(ref)) < 1e-10


def test_shapley_value_sampling_with_recorded_permutations():
  net, model, variables, x, xj, target, t = _setup()
  mask = np.stack([_blocks(4, 4), _blocks(3, 2)])
  samples = 3
  svs = captum_attr.ShapleyValueSampling(net)
  recorded = []
  original = svs.permutation_generator

  def recording(num_features, num_samples):
    for permutation in original(num_features, num_samples):
      recorded.append(list(permutation))
      yield permutation

  svs.permutation_generator = recording
  torch.manual_seed(3)
  baseline = torch.full_like(x, -0.2)
  ref = svs.attribute(x, baselines=baseline, target=target,
                      feature_mask=torch.from_numpy(mask)[:, None], n_samples=samples,
                      perturbations_per_eval=5)
  assert len(recorded) == samples and len(recorded[0]) == 16
  got = explain.shapley_sampling(model, variables, xj, t, feature_mask=mask, baseline=-0.2,
                                 samples=samples, permutations=np.array(recorded), chunk=6)
  assert _rel(got, _nhwc(ref)) < 1e-6  # Captum accumulates in float32


def _record_samples(attribution, generator: bool):
  """Wraps a Captum Lime/KernelShap's perturb_func; returns the list it fills."""
  recorded = []
  original = attribution.perturb_func
  if generator:
    def recording(inputs, **kwargs):
      for sample in original(inputs, **kwargs):
        recorded.append(sample.numpy().reshape(-1).copy())
        yield sample
  else:
    def recording(inputs, **kwargs):
      sample = original(inputs, **kwargs)
      recorded.append(sample.numpy().reshape(-1).copy())
      return sample
  attribution.perturb_func = recording
  return recorded


# Captum's default width 1 for the cosine distance; the euclidean distances between these
# 768-element inputs are ~15, so width 1 would give weights exp(-100) = 0.
@pytest.mark.parametrize("distance, width", [("cosine", 1.0), ("euclidean", 12.0)])
def test_captum_lime_with_recorded_samples(distance, width):
  net, model, variables, x, xj, target, t = _setup()
  from captum._utils.models.linear_model import SkLearnLasso  # pylint: disable=g-import-not-at-top
  from captum.attr._core.lime import get_exp_kernel_similarity_function  # pylint: disable=g-import-not-at-top
  mask = _blocks(2, 4)  # 8 features, fewer than the 25 samples: a unique Lasso solution
  # Captum's default Lime (Lasso alpha=0.01, exponential kernel of width 1, Bernoulli
  # samples), the Lasso's tolerance tightened so both solve the same problem to convergence.
  lime = captum_attr.Lime(net, interpretable_model=SkLearnLasso(alpha=0.01, tol=1e-12,
                                                                max_iter=1_000_000),
                          similarity_func=get_exp_kernel_similarity_function(distance, width))
  recorded = _record_samples(lime, generator=False)
  torch.manual_seed(4)
  ref = lime.attribute(x, target=target, feature_mask=torch.from_numpy(mask)[None, None],
                       baselines=0.1)
  coalitions = np.array(recorded).reshape(BATCH, 25, 8)
  got = explain.lime(model, variables, xj, t, reference="captum", feature_mask=mask,
                     baseline=0.1, distance=distance, kernel_width=width,
                     coalitions=coalitions, chunk=10)
  assert (np.asarray(got) != 0).mean() > 0.5  # the penalty leaves most features in
  assert _rel(got, _nhwc(ref)) < 1e-5  # Captum fits in float32


@pytest.mark.parametrize("features, samples", [(8, 40), (16, 12)],
                         ids=["determined", "fewer_samples_than_features"])
def test_kernel_shap_with_recorded_samples(features, samples):
  net, model, variables, x, xj, target, t = _setup()
  mask = _blocks(2, 4) if features == 8 else _blocks(4, 4)
  kernel_shap = captum_attr.KernelShap(net)
  recorded = _record_samples(kernel_shap, generator=True)
  torch.manual_seed(5)
  baseline = 0.3 * torch.randn(1, *x.shape[1:], generator=torch.Generator().manual_seed(6))
  ref = kernel_shap.attribute(x, baselines=baseline.double(), target=target, n_samples=samples,
                              feature_mask=torch.from_numpy(mask)[None, None])
  coalitions = np.array(recorded).reshape(BATCH, samples, features)
  got = explain.kernel_shap(model, variables, xj, t, feature_mask=mask,
                            baseline=_nhwc(baseline.double()), samples=samples,
                            coalitions=coalitions)
  assert _rel(got, _nhwc(ref)) < 1e-5  # Captum fits in float32


PALETTE = np.array([(0.9, 0.1, 0.1), (0.1, 0.8, 0.2), (0.2, 0.2, 0.9), (0.9, 0.9, 0.2)])


def _patch_images(n, size, seed):
  """Four patches of distinct colours at random cuts, plus a little noise."""
  rng = np.random.default_rng(seed)
  images = np.zeros((n, size, size, 3))
  for image in images:
    row, col = rng.integers(size // 4, 3 * size // 4, 2)
    colours = PALETTE[rng.permutation(4)]
    image[:row, :col], image[:row, col:] = colours[0], colours[1]
    image[row:, :col], image[row:, col:] = colours[2], colours[3]
  return np.clip(images + 0.02 * rng.normal(size=images.shape), 0, 1)


@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_lime_package_with_recorded_data(monkeypatch, distance):
  lime_image = pytest.importorskip("lime.lime_image")
  size, samples = 64, 24  # XLA:CPU's float64 convolutions are slow: few samples
  net, model, variables, _, _, _, _ = _setup(size)
  x = _patch_images(BATCH, size, seed=1)
  segments = explain.segment(x)
  counts = [int(s.max()) + 1 for s in segments]
  assert counts == [4, 5]  # image 0 lacks feature 4: it must be left out of its fit
  with torch.no_grad():
    t = net(_nchw(x)).argmin(1).numpy().astype(np.int32)

  def classifier(images):
    with torch.no_grad():
      return net(_nchw(images)).numpy()  # raw logits, as xai_jax explains

  recorded = []
  data_labels = lime_image.LimeImageExplainer.data_labels

  def recording(self, *args, **kwargs):
    data, labels = data_labels(self, *args, **kwargs)
    recorded.append(data.copy())
    return data, labels

  monkeypatch.setattr(lime_image.LimeImageExplainer, "data_labels", recording)
  features = max(counts)
  coalitions = np.zeros((BATCH, samples, features), np.int64)
  want = np.zeros_like(x)
  for n in range(BATCH):
    explainer = lime_image.LimeImageExplainer(random_state=n)
    explanation = explainer.explain_instance(
        x[n], classifier, labels=(int(t[n]),), hide_color=None, top_labels=None,
        num_samples=samples, batch_size=16, segmentation_fn=lambda _, n=n: segments[n],
        distance_metric=distance, random_seed=0)
    coalitions[n, :, :counts[n]] = recorded[n]
    coefficients = np.zeros(features)
    for feature, value in explanation.local_exp[int(t[n])]:
      coefficients[feature] = value
    want[n] = coefficients[segments[n]][..., None]
  got = explain.lime(model, variables, x, t, feature_mask=segments, samples=samples,
                     coalitions=coalitions, distance=distance, chunk=16)
  assert _rel(got, want) < 1e-10
