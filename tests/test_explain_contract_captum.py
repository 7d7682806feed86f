"""Parity of DeepLift, DeepLiftShap, guided backprop, deconvolution, Grad-CAM, Guided
Grad-CAM and FullGrad with Captum 0.9 and the FullGrad reference algorithm.

torchvision VGG11 (32x32), AlexNet (64x64) and ResNet18 (64x64, so that its
last block is 2x2 rather than a single Grad-CAM pixel) with random
weights, random NONZERO biases and random batch-norm parameters / running
statistics (torchvision initialises biases to 0, which would hide the
DeepLift hook quirk and make FullGrad's bias terms vanish) are ported with
`xai_jax.models.port.from_torchvision`. Error = max|a - b| / max|b|.

Every comparison runs in float64 in both frameworks, below 1e-10. Each method
routes the gradient through max-pool windows (and DeepLift through `|Δ| < eps`
branches). Random-weight feature maps have thousands of windows, some with their
two largest values within ~1e-6 of each other, so in float32 the ~1e-7 rounding
differences between XLA's and torch's (oneDNN's) convolutions pick a different
arg-max in a few windows and send a whole receptive field's gradient elsewhere:
0.15-0.2% error on VGG11 with torch's AVX2 kernels (`python tests/emulate_cpu.py
avx2`), none with its AVX-512 ones, so a float32 test passes or fails with the CPU.
In float64 the rounding (~1e-16) is ten orders of magnitude below the gaps.

Notes on the torch side:
  * All ReLUs are made out-of-place (Captum handles in-place ReLUs, but the
    FullGrad reference's tensor hooks on conv outputs must see the pre-ReLU
    value).
  * torchvision's BasicBlock calls its ReLU module twice, which Captum's
    DeepLift rejects (reference-semantics A.4); every block gets one ReLU
    module per call site (`_split_relus`), which changes nothing else.
"""

import copy
import functools
import importlib
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
captum_attr = pytest.importorskip("captum.attr")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from xai_jax import models  # noqa: E402
from xai_jax.models import port  # noqa: E402
import narrow_nets  # noqa: E402

dl = importlib.import_module("xai_jax.explain.deeplift_rules")
guided = importlib.import_module("xai_jax.explain.guided")
cam = importlib.import_module("xai_jax.explain.cam")
fg = importlib.import_module("xai_jax.explain.full_gradient")

pytestmark = [pytest.mark.torch, pytest.mark.parity, pytest.mark.slow]

NUM_CLASSES = 10
SIZES = {"vgg11": 32, "alexnet": 64, "resnet18": 64}
# torch module of each model's default Grad-CAM layer (the contract name is checked too).
GRADCAM_LAYERS = {"vgg11": ("features_19", lambda m: m.features[19]),
                  "alexnet": ("features_11", lambda m: m.features[11]),
                  "resnet18": ("layer4_1/relu2", lambda m: m.layer4[1])}
TARGET = [1, 7]


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.abs(a - b).max() / np.abs(b).max())


def _randomize(model, seed):
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, torch.nn.ReLU):
        m.inplace = False
      if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
  return model.eval()


def _split_relus(model):
  """One ReLU module per call site in torchvision's BasicBlock (Captum DeepLift needs it)."""
  for block in model.modules():
    if isinstance(block, torchvision.models.resnet.BasicBlock):
      block.relu1, block.relu2 = torch.nn.ReLU(), torch.nn.ReLU()

      def forward(self, x):
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu2(out + identity)
      block.forward = types.MethodType(forward, block)
  return model


@functools.lru_cache(maxsize=None)
def _setup(name):
  """(torch model float32, Flax variables float32, x NCHW float32) for one architecture."""
  torch.manual_seed(0)
  tm = getattr(torchvision.models, name)(num_classes=NUM_CLASSES)
  tm = _randomize(narrow_nets.narrow(name, tm), seed=1)
  if name.startswith("resnet"):
    _split_relus(tm)
  variables = port.from_torchvision(name, tm.state_dict(), **narrow_nets.options(name))
  g = torch.Generator().manual_seed(3)
  x = torch.randn(2, 3, SIZES[name], SIZES[name], generator=g)
  return tm, variables, x


def _nhwc(t):
  return np.ascontiguousarray(t.detach().permute(0, 2, 3, 1).numpy())


def _f64(variables):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)


# ---------------------------------------------------------------------------
# DeepLift / DeepLiftShap (float64).
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _setup64(name):
  """The torch model of `_setup` in float64 and its Flax variables in float64 (x64 arrays)."""
  tm, variables, _ = _setup(name)
  with jax.enable_x64(True):
    return copy.deepcopy(tm).double(), _f64(variables)


@pytest.mark.parametrize("name", ["vgg11", "alexnet", "resnet18"])
def test_deeplift_captum_compat_matches_captum(name):
  """ReLU -> MaxPool chains everywhere (VGG, AlexNet, ResNet stem), overlapping 3x3/2
  pools (AlexNet, ResNet): Captum's hook order and unpool semantics reproduced."""
  _, _, x = _setup(name)
  tm64, v64 = _setup64(name)
  x64 = x.double()
  b64 = 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(4)).double()
  ref, ref_delta = captum_attr.DeepLift(tm64).attribute(
      x64, b64, target=torch.tensor(TARGET), return_convergence_delta=True)
  with jax.enable_x64(True):
    model = models.get(name, num_classes=NUM_CLASSES, dtype=jnp.float64,
                       **narrow_nets.options(name))
    ours, delta = dl.deeplift(model, v64, jnp.asarray(_nhwc(x64)), jnp.asarray(TARGET),
                              baseline=jnp.asarray(_nhwc(b64)), captum_compat=True,
                              return_delta=True)
  assert _rel(ours, _nhwc(ref)) < 1e-9
  ref_delta = ref_delta.detach().numpy()
  np.testing.assert_allclose(delta, ref_delta, rtol=1e-7, atol=1e-12)
  # The quirk matters here: Captum misses completeness by > 0.1% of f(x) - f(b).
  delta_f = ref.detach().sum((1, 2, 3)).numpy() - ref_delta
  assert np.max(np.abs(ref_delta / delta_f)) > 1e-3


class _TorchCNN(torch.nn.Module):
  """torch twin of `xai_jax.models.get("cnn")` (ReLU -> MaxPool 2x2/2 chains)."""

  def __init__(self, size, num_classes):
    super().__init__()
    self.conv1 = torch.nn.Conv2d(3, 32, 5, padding=2)
    self.relu1, self.pool1 = torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2)
    self.conv2 = torch.nn.Conv2d(32, 64, 5, padding=2)
    self.relu2, self.pool2 = torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2)
    self.fc1 = torch.nn.Linear(64 * (size // 4) ** 2, 1024)
    self.relu3 = torch.nn.ReLU()
    self.fc2 = torch.nn.Linear(1024, num_classes)

  def forward(self, x):
    x = self.pool1(self.relu1(self.conv1(x)))
    x = self.pool2(self.relu2(self.conv2(x)))
    return self.fc2(self.relu3(self.fc1(torch.flatten(x, 1))))


def _cnn_variables(tm):
  conv = lambda m: {"kernel": jnp.asarray(m.weight.detach().numpy().transpose(2, 3, 1, 0)),
                    "bias": jnp.asarray(m.bias.detach().numpy())}
  dense = lambda m: {"kernel": jnp.asarray(m.weight.detach().numpy().T),
                     "bias": jnp.asarray(m.bias.detach().numpy())}
  return {"params": {"conv1": conv(tm.conv1), "conv2": conv(tm.conv2),
                     "fc1": dense(tm.fc1), "fc2": dense(tm.fc2)}}


def test_deeplift_default_matches_captum_where_the_quirk_is_invisible():
  """Zero biases and a zero baseline: every reference activation is 0, so Captum's
  chained hooks change nothing (A.4) and its result is the exact chain rule; the
  2x2/2 pools do not overlap."""
  torch.manual_seed(0)
  tm = _TorchCNN(16, NUM_CLASSES).eval()
  with torch.no_grad():
    for m in tm.modules():
      if getattr(m, "bias", None) is not None:
        m.bias.zero_()
  x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(6))
  variables = _cnn_variables(tm)
  tm64 = tm.double()
  ref = captum_attr.DeepLift(tm64).attribute(x.double(), target=torch.tensor(TARGET))
  with jax.enable_x64(True):
    model = models.get("cnn", num_classes=NUM_CLASSES, dtype=jnp.float64)
    ours, delta = dl.deeplift(model, _f64(variables), jnp.asarray(_nhwc(x.double())),
                              jnp.asarray(TARGET), return_delta=True)
  assert _rel(ours, _nhwc(ref)) < 1e-9
  assert np.max(np.abs(delta)) < 1e-10


def test_deeplift_shap_matches_captum():
  _, _, x = _setup("vgg11")
  tm64, v64 = _setup64("vgg11")
  x64 = x[:1].double()
  refs = 0.3 * torch.randn((2,) + tuple(x.shape[1:]),
                           generator=torch.Generator().manual_seed(5)).double()
  ref, ref_delta = captum_attr.DeepLiftShap(tm64).attribute(
      x64, refs, target=torch.tensor(TARGET[:1]), return_convergence_delta=True)
  with jax.enable_x64(True):
    model = models.get("vgg11", num_classes=NUM_CLASSES, dtype=jnp.float64,
                       **narrow_nets.options("vgg11"))
    ours, delta = dl.deeplift_shap(model, v64, jnp.asarray(_nhwc(x64)),
                                   jnp.asarray(TARGET[:1]), baselines=jnp.asarray(_nhwc(refs)),
                                   captum_compat=True, return_delta=True)
  assert _rel(ours, _nhwc(ref)) < 1e-9
  np.testing.assert_allclose(np.asarray(delta).reshape(-1), ref_delta.detach().numpy(),
                             rtol=1e-7, atol=1e-12)


# ---------------------------------------------------------------------------
# Guided backprop, deconvolution, Grad-CAM, Guided Grad-CAM (float64).
# ---------------------------------------------------------------------------

TOL = 1e-10  # float64 in both frameworks; measured 1e-15 - 1e-13.


def _case64(name):
  """(torch model float64, Flax model float64, variables float64, x NCHW float64).

  Call under `jax.enable_x64(True)`.
  """
  _, _, x = _setup(name)
  tm64, v64 = _setup64(name)
  model = models.get(name, num_classes=NUM_CLASSES, dtype=jnp.float64, **narrow_nets.options(name))
  return tm64, model, v64, x.double()


@pytest.mark.parametrize("name", ["vgg11", "alexnet", "resnet18"])
def test_guided_backprop_and_deconvolution_match_captum(name):
  with jax.enable_x64(True):
    tm, model, variables, x = _case64(name)
    target = torch.tensor(TARGET)
    ref_gbp = captum_attr.GuidedBackprop(tm).attribute(x.clone(), target=target)
    ref_dec = captum_attr.Deconvolution(tm).attribute(x.clone(), target=target)
    gbp = guided.guided_backprop(model, variables, _nhwc(x), np.array(TARGET))
    dec = guided.deconvolution(model, variables, _nhwc(x), np.array(TARGET))
    assert gbp.dtype == dec.dtype == jnp.float64
  assert _rel(gbp, _nhwc(ref_gbp)) < TOL
  assert _rel(dec, _nhwc(ref_dec)) < TOL


@pytest.mark.parametrize("name", ["vgg11", "alexnet", "resnet18"])
def test_gradcam_matches_captum_layer_gradcam_and_interpolate(name):
  layer_name, layer_fn = GRADCAM_LAYERS[name]
  with jax.enable_x64(True):
    tm, model, variables, x = _case64(name)
    assert model.gradcam_layer == layer_name
    target = torch.tensor(TARGET)
    lgc = captum_attr.LayerGradCam(tm, layer_fn(tm))
    size = x.shape[2:]
    raw = lgc.attribute(x.clone(), target=target)
    ref_nearest = captum_attr.LayerAttribution.interpolate(raw, size)[:, 0]
    ours = cam.gradcam(model, variables, _nhwc(x), np.array(TARGET))
    assert _rel(ours, ref_nearest.detach().numpy()) < TOL
    # Captum with relu_attributions=True and bilinear interpolation.
    raw_relu = lgc.attribute(x.clone(), target=target, relu_attributions=True)
    ref_bil = captum_attr.LayerAttribution.interpolate(raw_relu, size, "bilinear")[:, 0]
    ours_bil = cam.gradcam(model, variables, _nhwc(x), np.array(TARGET), relu=True,
                           upsample="bilinear")
    assert _rel(ours_bil, ref_bil.detach().numpy()) < TOL
    # pytorch-grad-cam's normalisation: ReLU, per-image min-max (+1e-7), half-pixel bilinear.
    shifted = raw_relu - raw_relu.amin(dim=(1, 2, 3), keepdim=True)
    normed = shifted / (shifted.amax(dim=(1, 2, 3), keepdim=True) + 1e-7)
    ref_norm = torch.nn.functional.interpolate(normed, size=tuple(size), mode="bilinear",
                                               align_corners=False)[:, 0]
    ours_norm = cam.gradcam(model, variables, _nhwc(x), np.array(TARGET), mode="normalized")
    assert _rel(ours_norm, ref_norm.detach().numpy()) < TOL


@pytest.mark.parametrize("name", ["vgg11", "alexnet", "resnet18"])
def test_guided_gradcam_matches_captum(name):
  with jax.enable_x64(True):
    tm, model, variables, x = _case64(name)
    ref = captum_attr.GuidedGradCam(tm, GRADCAM_LAYERS[name][1](tm)).attribute(
        x.clone(), target=torch.tensor(TARGET))
    ours = cam.guided_gradcam(model, variables, _nhwc(x), np.array(TARGET))
  assert _rel(ours, _nhwc(ref)) < TOL


# Tjoa & Guan's GuidedGradCam layer: the first conv layer's module (`select_first_layer`),
# i.e. its output before any ReLU; a linear layer's name in xai_jax.
FIRST_CONV = {"vgg11": ("features_0", lambda m: m.features[0]),
              "alexnet": ("features_0", lambda m: m.features[0]),
              "resnet18": ("conv1", lambda m: m.conv1)}


@pytest.mark.parametrize("name", ["vgg11", "alexnet", "resnet18"])
def test_gradcam_and_guided_gradcam_at_the_first_conv_output_match_captum(name):
  layer_name, layer_fn = FIRST_CONV[name]
  with jax.enable_x64(True):
    tm, model, variables, x = _case64(name)
    target = torch.tensor(TARGET)
    raw = captum_attr.LayerGradCam(tm, layer_fn(tm)).attribute(x.clone(), target=target)
    ref_cam = captum_attr.LayerAttribution.interpolate(raw, x.shape[2:])[:, 0]
    ref_guided = captum_attr.GuidedGradCam(tm, layer_fn(tm)).attribute(x.clone(), target=target)
    ours_cam = cam.gradcam(model, variables, _nhwc(x), np.array(TARGET), layer=layer_name)
    ours_guided = cam.guided_gradcam(model, variables, _nhwc(x), np.array(TARGET),
                                     layer=layer_name)
    # The ReLU after the conv matters: the activation there gives another map.
    after_relu = cam.gradcam(model, variables, _nhwc(x), np.array(TARGET),
                             layer="features_1" if name != "resnet18" else "relu")
  assert _rel(ours_cam, ref_cam.detach().numpy()) < TOL
  assert _rel(ours_guided, _nhwc(ref_guided)) < TOL
  assert _rel(after_relu, ref_cam.detach().numpy()) > 1e-3


# ---------------------------------------------------------------------------
# FullGrad against the reference algorithm (reference-semantics B), in torch.
# ---------------------------------------------------------------------------


def _effective_bias(m):
  if isinstance(m, torch.nn.BatchNorm2d):
    return m.bias - m.running_mean * m.weight / torch.sqrt(m.running_var + m.eps)
  return m.bias


def _post_process(t, eps=1e-6):
  """idiap `_postProcess`: abs, minus the per-sample min over C*H*W, / (max + eps)."""
  t = t.abs()
  flat = t.reshape(t.shape[0], -1)
  t = t - flat.min(1).values.reshape(-1, *([1] * (t.dim() - 1)))
  flat = t.reshape(t.shape[0], -1)
  return t / (flat.max(1).values.reshape(-1, *([1] * (t.dim() - 1))) + eps)


def fullgrad_reference(model, x, target, *, simple=False):
  """idiap FullGrad / SimpleFullGrad with output-gradient hooks on every biased
  Conv2d / Linear / BatchNorm2d; returns (saliency [N, H, W], completeness lhs, logits)."""
  grads, handles = {}, []
  sites = [m for m in model.modules()
           if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear, torch.nn.BatchNorm2d))
           and m.bias is not None]
  for m in sites:
    def hook(mod, inputs, out):
      out.register_hook(lambda g, mod=mod: grads.__setitem__(mod, g))
    handles.append(m.register_forward_hook(hook))
  x = x.clone().requires_grad_(True)
  out = model(x)
  scalar = -torch.nn.functional.nll_loss(out, target, reduction="sum")
  grad_x = torch.autograd.grad(scalar, x)[0]
  for h in handles:
    h.remove()
  with torch.no_grad():
    terms = []
    for m in sites:
      g = grads[m]
      shape = [1, -1] + [1] * (g.dim() - 2)
      terms.append(g if simple else g * _effective_bias(m).reshape(shape))
    saliency = _post_process(grad_x * x).sum(1)
    for t in terms:
      if t.dim() == 4:
        up = torch.nn.functional.interpolate(_post_process(t), size=tuple(x.shape[2:]),
                                             mode="bilinear", align_corners=True)
        saliency = saliency + up.sum(1)
    lhs = (grad_x * x).sum((1, 2, 3)) + sum(t.reshape(t.shape[0], -1).sum(1) for t in terms)
  return saliency, lhs, out.detach()


@pytest.mark.parametrize("name", ["vgg11", "alexnet", "resnet18"])
def test_fullgrad_matches_reference_algorithm(name):
  with jax.enable_x64(True):
    tm, model, variables, x = _case64(name)
    target = torch.tensor(TARGET)
    ref, ref_lhs, logits = fullgrad_reference(tm, x, target)
    ours = fg.fullgrad(model, variables, _nhwc(x), np.array(TARGET))
    assert _rel(ours, ref.numpy()) < TOL
    lhs, rhs, rel = fg.fullgrad_completeness(model, variables, _nhwc(x), np.array(TARGET))
    np.testing.assert_allclose(lhs, ref_lhs.numpy(), rtol=TOL)
    np.testing.assert_allclose(rhs, logits[torch.arange(2), target].numpy(), rtol=TOL)
    assert np.max(rel) < 1e-10
    if name == "vgg11":
      ref_simple, _, _ = fullgrad_reference(tm, x, target, simple=True)
      ours_simple = fg.simple_fullgrad(model, variables, _nhwc(x), np.array(TARGET))
      assert _rel(ours_simple, ref_simple.numpy()) < TOL
