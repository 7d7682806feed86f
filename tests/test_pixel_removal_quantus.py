"""Parity of `perturbation_curve` with Quantus 0.6.0 PixelFlipping and RegionPerturbation.

The same tiny conv net is built in Flax and in torch with copied weights. Where the semantics
coincide the curves must agree to float32 rounding:

* PixelFlipping removes *channel-pixels* in `np.argsort(-a)` order, one `features_in_step`
  group per step, and records `p_y` after each step (no unperturbed point). A one-channel map
  broadcast to C channels makes the C features of a pixel tie with each other and with
  nothing else (the map is tie-free), so with `features_in_step = C * step` every step removes
  exactly `step` whole pixels whatever order the unstable sort gives inside a pixel: that is
  our curve with `step`, `score="prob"`, and `scores[:, 1:]`.
* RegionPerturbation ranks non-overlapping `patch_size`-squares by the summed attribution and
  records `p_y(x) - p_y(x_pert)`; a map constant on each patch (the patch sum) removed
  `patch_size**2` pixels per step is the same curve.

Where they cannot agree (so only the comparable settings are tested):

* Quantus' "mean" baseline is recomputed from the *already perturbed* array at every step
  (`get_baseline_value` on `x_perturbed`), so it drifts along the curve; ours is fixed (the
  evaluated batch's or a given mean). Constants and "black" (the per-sample minimum over all
  channels and pixels, which replacing by it never changes) are comparable: "black" is our
  `fill=x.min(axis=(1, 2, 3), keepdims=True)`.
* `order="random"` uses the global `np.random` state in Quantus and an explicit JAX key here.
* Quantus breaks ties with an unstable sort; ties are avoided in these tests.

float32 in both frameworks (Quantus converts every input to a float32 tensor) is enough on
any CPU: the removal order comes from the maps alone, whose values are at least 1 apart, and
the net has no max-pool, so each curve point is a continuous function of the logits and the
torch/XLA rounding difference (~1e-7 relative, whichever kernels the CPU gets) stays far
inside the 1e-5 tolerance; `python tests/emulate_cpu.py avx2 -- tests/test_pixel_removal_quantus.py`
checks it with another CPU's kernels.
"""

import pytest

torch = pytest.importorskip("torch")
quantus = pytest.importorskip("quantus")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from xai_jax.metrics import pixel_removal as pr  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.parity, pytest.mark.slow]

N, H, W, C = 3, 6, 6, 3
NUM_CLASSES = 3


class TinyConvNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
    return nn.Dense(NUM_CLASSES)(x.reshape(x.shape[0], -1))


MODEL = TinyConvNet()


class TorchTinyConvNet(torch.nn.Module):
  """Conv 3x3 'SAME' + ReLU + dense over the NHWC flattening, as `TinyConvNet`."""

  def __init__(self, variables):
    super().__init__()
    params = variables["params"]
    kernel = np.asarray(params["Conv_0"]["kernel"])  # [3, 3, C, F] (HWIO)
    self.conv = torch.nn.Conv2d(kernel.shape[2], kernel.shape[3], 3, padding=1)
    self.dense = torch.nn.Linear(*np.asarray(params["Dense_0"]["kernel"]).shape)
    with torch.no_grad():
      self.conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()))
      self.conv.bias.copy_(torch.from_numpy(np.array(params["Conv_0"]["bias"])))
      self.dense.weight.copy_(torch.from_numpy(np.asarray(params["Dense_0"]["kernel"]).T.copy()))
      self.dense.bias.copy_(torch.from_numpy(np.array(params["Dense_0"]["bias"])))

  def forward(self, x):
    hidden = torch.relu(self.conv(x)).permute(0, 2, 3, 1)
    return self.dense(hidden.reshape(x.shape[0], -1))


@pytest.fixture(scope="module")
def setup():
  kx, kp, ks = jax.random.split(jax.random.key(7), 3)
  x = jax.random.normal(kx, (N, H, W, C))
  variables = jax.tree.map(lambda v: 3.0 * v, MODEL.init(kp, x))
  net = TorchTinyConvNet(variables).eval()
  # Tie-free maps with well separated values (normalisation by the max keeps the order).
  saliency = jnp.stack([
      jax.random.permutation(k, H * W).reshape(H, W).astype(jnp.float32) + 1.0
      for k in jax.random.split(ks, N)])
  logits = np.asarray(MODEL.apply(variables, x))
  with torch.no_grad():
    torch_logits = net(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy()
  np.testing.assert_allclose(torch_logits, logits, rtol=1e-5, atol=1e-5)
  return x, variables, net, saliency, logits.argmax(1)


def _nchw(a):
  return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


@pytest.mark.parametrize("step,baseline", [(1, 0.3), (4, -1.0), (2, "black")])
def test_pixel_flipping_parity(setup, step, baseline):
  x, variables, net, saliency, target = setup
  metric = quantus.PixelFlipping(features_in_step=C * step, perturb_baseline=baseline,
                                 disable_warnings=True, display_progressbar=False)
  theirs = np.asarray(metric(model=net, x_batch=_nchw(x), y_batch=target,
                             a_batch=np.asarray(saliency)[:, None], channel_first=True,
                             softmax=True, device="cpu"))
  fill = x.min(axis=(1, 2, 3), keepdims=True) if baseline == "black" else baseline
  ours = pr.perturbation_curve(MODEL, variables, x, saliency, order="morf", step=step,
                               fill=fill, score="prob")
  assert theirs.shape == (N, ours.scores.shape[1] - 1)
  np.testing.assert_allclose(np.asarray(ours.scores)[:, 1:], theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation_parity(setup, order):
  x, variables, net, _, target = setup
  patch, regions = 2, 6
  # A pixel map whose patch sums are far apart (a permutation of 10 * [0, 9) plus < 1 per
  # pixel), so the patch ranking has no ties and no near-ties under float32 rounding.
  rng = np.random.default_rng(0)
  coarse = np.stack([rng.permutation(9).reshape(3, 3) for _ in range(N)]) * 10.0
  saliency = (np.repeat(np.repeat(coarse, patch, axis=1), patch, axis=2)
              + rng.uniform(size=(N, H, W))).astype(np.float32)
  # Ours: a map constant on each 2x2 patch, equal to the patch sum of the pixel map.
  sums = saliency.reshape(N, H // patch, patch, W // patch, patch).sum((2, 4))
  patch_map = np.repeat(np.repeat(sums, patch, axis=1), patch, axis=2)
  metric = quantus.RegionPerturbation(patch_size=patch, order=order, regions_evaluation=regions,
                                      perturb_baseline=0.5, disable_warnings=True,
                                      display_progressbar=False)
  theirs = np.asarray(metric(model=net, x_batch=_nchw(x), y_batch=target,
                             a_batch=np.asarray(saliency)[:, None], channel_first=True,
                             softmax=True, device="cpu"))
  ours = pr.perturbation_curve(MODEL, variables, x, jnp.asarray(patch_map), order=order,
                               step=patch * patch, max_fraction=regions * patch**2 / (H * W),
                               fill=0.5, score="prob")
  drop = np.asarray(ours.scores[:, :1] - ours.scores[:, 1:])
  assert theirs.shape == drop.shape == (N, regions)
  np.testing.assert_allclose(drop, theirs, rtol=1e-5, atol=1e-6)
