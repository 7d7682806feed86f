"""Parity of the gradient-family explainers with Captum 0.9 on ported torchvision networks.

Networks: torchvision vgg11, alexnet and resnet18 with random weights (nonzero
biases, randomised batch-norm statistics), converted by
`xai_jax.models.port.from_torchvision`, at 32x32 for VGG11 and ResNet18 and
64x64 for AlexNet (its pooling needs 63 pixels), to keep the test fast.
Captum's torch/numpy randomness is replayed from the same seeds and fed to
xai_jax as injected noise / alphas / baseline indices.

Error measure: max|a - b| / max|b| over the whole attribution tensor, required
below 1e-10, in float64 in both frameworks (measured ~1e-15). Every network
routes the gradient through max-pool windows, and random-weight feature maps
have windows whose two largest values differ by ~1e-6 relative (thousands of
windows, some near-ties are inevitable). In float32 the ~1e-7 rounding
differences between XLA's and torch's convolutions, which depend on the CPU's
instruction set, flip a few arg-maxes and route whole receptive fields'
gradients differently: 0.6% error on VGG11, and AlexNet/ResNet18 agree to 1e-6
only as long as no window is that close on the machine at hand. In float64 the
rounding is ten orders of magnitude below the gaps. `python tests/emulate_cpu.py
avx2 -- tests/test_explain_captum.py` runs this module with another CPU's kernels.
"""

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
captum_attr = pytest.importorskip("captum.attr")

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

from xai_jax import explain, models  # pylint: disable=g-import-not-at-top
from xai_jax.explain import integrated  # pylint: disable=g-import-not-at-top
from xai_jax.models import port  # pylint: disable=g-import-not-at-top
import narrow_nets  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.parity, pytest.mark.slow]

BATCH, CLASSES = 2, 10
SIZES = {"vgg11": 32, "alexnet": 64, "resnet18": 32}  # AlexNet's pools need >= 63 pixels
TOL = 1e-10
NETS = tuple(SIZES)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


def _in_precision(test):
  """Runs `test(name)` with JAX's float64 enabled (the comparison precision)."""

  @functools.wraps(test)
  def wrapped(name):
    with jax.enable_x64(True):
      test(name)

  return wrapped


def _nhwc(t):
  return t.detach().permute(0, 2, 3, 1).numpy()


@functools.lru_cache(maxsize=None)
def _setup(name):
  """(torch model, flax model, flax variables, x torch, x jax, target), all float64."""
  torch.manual_seed(0)
  net = getattr(torchvision.models, name)(weights=None, num_classes=CLASSES)
  net = narrow_nets.narrow(name, net).eval()
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
        module.bias.uniform_(-0.1, 0.1)
      if isinstance(module, torch.nn.BatchNorm2d):
        module.weight.uniform_(0.5, 1.5)
        module.bias.uniform_(-0.2, 0.2)
        module.running_mean.uniform_(-0.2, 0.2)
        module.running_var.uniform_(0.5, 1.5)
  x = torch.randn(BATCH, 3, SIZES[name], SIZES[name])
  variables = port.from_torchvision(name, net.state_dict(), **narrow_nets.options(name))
  net, x = net.double(), x.double()
  with jax.enable_x64(True):
    variables = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), variables)
    model = models.get(name, num_classes=CLASSES, dtype=jnp.float64, **narrow_nets.options(name))
    with torch.no_grad():
      logits = net(x)
    target = logits.argmin(1)  # a target other than the arg-max
    xj = jnp.asarray(_nhwc(x))
    np.testing.assert_allclose(model.apply(variables, xj), logits.numpy(),
                               rtol=TOL, atol=TOL * float(logits.abs().max()))
  return net, model, variables, x, xj, target


@pytest.mark.parametrize("name", NETS)
@_in_precision
def test_saliency_and_input_x_gradient(name):
  net, model, variables, x, xj, target = _setup(name)
  t = jnp.asarray(target.numpy())
  sal = captum_attr.Saliency(net).attribute(x, target=target)  # abs=True by default
  assert _rel(explain.gradient(model, variables, xj, t, abs=True), _nhwc(sal)) < TOL
  signed = captum_attr.Saliency(net).attribute(x, target=target, abs=False)
  assert _rel(explain.gradient(model, variables, xj, t), _nhwc(signed)) < TOL
  ixg = captum_attr.InputXGradient(net).attribute(x, target=target)
  assert _rel(explain.input_x_gradient(model, variables, xj, t), _nhwc(ixg)) < TOL


@pytest.mark.parametrize("name", NETS)
@_in_precision
def test_integrated_gradients_every_rule(name):
  net, model, variables, x, xj, target = _setup(name)
  t = jnp.asarray(target.numpy())
  ig = captum_attr.IntegratedGradients(net)
  gen = torch.Generator().manual_seed(1)
  baseline = 0.1 * torch.randn(1, *x.shape[1:], generator=gen).to(x.dtype)
  steps = 4
  # Nodes and weights do not depend on the network: every rule on AlexNet and
  # ResNet18; on VGG11 (the slowest) the default rule and Captum's trapezoid.
  rules = integrated.RULES if name != "vgg11" else ("gausslegendre", "riemann_trapezoid")
  for rule in rules:
    ref, ref_delta = ig.attribute(x, baselines=baseline, target=target, n_steps=steps,
                                  method=rule, return_convergence_delta=True)
    got, delta = explain.integrated_gradients(
        model, variables, xj, t, baseline=jnp.asarray(_nhwc(baseline)), steps=steps, rule=rule,
        captum_compat=True, chunk=2, return_delta=True)
    err = _rel(got, _nhwc(ref))
    assert err < TOL, (rule, err)
    # delta = sum(attr) - (f(x) - f(b)): its float error scales with the logits.
    with torch.no_grad():
      scale = float(torch.cat([net(x), net(baseline)]).abs().max())
    np.testing.assert_allclose(delta, ref_delta.numpy(), atol=TOL * scale)
  # Without captum_compat the trapezoid uses correct weights and must differ from Captum.
  ref = ig.attribute(x, baselines=baseline, target=target, n_steps=steps,
                     method="riemann_trapezoid")
  got = explain.integrated_gradients(model, variables, xj, t, baseline=jnp.asarray(
      _nhwc(baseline)), steps=steps, rule="riemann_trapezoid", chunk=2)
  assert _rel(got, _nhwc(ref)) > 1e-2


@pytest.mark.parametrize("name", NETS)
@_in_precision
def test_gradient_shap_replayed_randomness(name):
  net, model, variables, x, xj, target = _setup(name)
  t = jnp.asarray(target.numpy())
  samples, stdev, seed = 3, 0.2, 123
  gen = torch.Generator().manual_seed(2)
  baselines = 0.3 * torch.randn(4, *x.shape[1:], generator=gen).to(x.dtype)
  np.random.seed(seed)
  torch.manual_seed(seed)
  ref = captum_attr.GradientShap(net).attribute(x, baselines=baselines, target=target,
                                                n_samples=samples, stdevs=stdev)
  # Replay Captum's draws in its order: baseline indices, noise, alphas.
  np.random.seed(seed)
  torch.manual_seed(seed)
  indices = np.random.choice(4, samples * BATCH)
  shape = (BATCH * samples,) + tuple(x.shape[1:])
  noise = torch.normal(0, torch.tensor(stdev).repeat(shape))
  alphas = np.random.uniform(0.0, 1.0, samples * BATCH)  # Captum casts to x.dtype
  got = explain.gradient_shap(
      model, variables, xj, t, baselines=jnp.asarray(_nhwc(baselines)), samples=samples,
      stdev=stdev, alphas=alphas.reshape(BATCH, samples),
      baseline_indices=indices.reshape(BATCH, samples),
      noise=_nhwc(noise).reshape((BATCH, samples) + xj.shape[1:]), chunk=2)
  err = _rel(got, _nhwc(ref))
  assert err < TOL, err


@pytest.mark.parametrize("name", NETS)
@_in_precision
def test_noise_tunnel_replayed_noise(name):
  net, model, variables, x, xj, target = _setup(name)
  t = jnp.asarray(target.numpy())
  samples, stdev = 3, 0.3
  shape = (BATCH * samples,) + tuple(x.shape[1:])
  kinds = {"smoothgrad": "mean", "smoothgrad_sq": "squared", "vargrad": "var"}
  for seed, (nt_type, kind) in enumerate(kinds.items()):
    torch.manual_seed(seed)
    ref = captum_attr.NoiseTunnel(captum_attr.Saliency(net)).attribute(
        x, nt_type=nt_type, nt_samples=samples, stdevs=stdev, target=target)
    torch.manual_seed(seed)
    noise = torch.normal(0, torch.tensor(stdev).repeat(shape))
    got = explain.smoothgrad(explain.gradient, model, variables, xj, t, samples=samples,
                             noise=_nhwc(noise).reshape((BATCH, samples) + xj.shape[1:]),
                             kind=kind, chunk=2, abs=True)  # NoiseTunnel(Saliency): |grad|
    err = _rel(got, _nhwc(ref))
    assert err < TOL, (nt_type, err)
