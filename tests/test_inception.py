"""Inception v3 (`models.get("inception_v3")`) against torchvision and Captum.

torchvision's `inception_v3` is built with random weights (He-scaled conv
weights so activations stay O(1) through 94 conv layers), random NONZERO
`fc` biases and random batch-norm scale, bias and running statistics, ported
with `port.from_torchvision`, and compared (error = max|a - b| / max|b|):

  * logits in float32 at 299x299 and 107x107 (< 1e-5), with and without
    `transform_input`; train mode with the auxiliary head at 299x299 (logits,
    aux logits and the updated batch-norm running statistics);
  * every `explain.METHODS` entry runs on it unchanged (75x75, finite, shapes;
    `test_inception_explainers.py`);
    FullGrad completeness holds (every bias is a bias site);
  * Captum 0.9 parity in float64 at 107x107 (Mixed_7c is then 2x2, so Grad-CAM
    is not a single pixel): Saliency, InputXGradient, IntegratedGradients,
    GuidedBackprop, DeepLift (`captum_compat=True`), LayerGradCam and
    GuidedGradCam on Mixed_7c.

Integrated gradients are compared with the midpoint rule: xai_jax rounds the
quadrature nodes to float32 (Captum's values for float32 inputs), while Captum
multiplies float64 inputs by the float64 Gauss-Legendre nodes. On this
network that 3e-9 shift of a node moves the input across a ReLU or max-pool
switch, and torch's own IG with the two node sets differs by 0.9%; the
midpoint nodes (k + 1/2) / 4 are exact in both.

The torch side for Captum: torchvision's BasicConv2d calls `F.relu` and
InceptionB/D call `F.max_pool2d`, which Captum's module hooks cannot see (its
GuidedBackprop and DeepLift would silently treat them as plain gradients).
`_hookable` gives every BasicConv2d its own out-of-place `nn.ReLU` module and
InceptionB/D an `nn.MaxPool2d` module: the same function (checked), with
the nonlinearities where Captum looks for them, one module per call site.
"""

import copy
import functools
import math
import types

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
captum_attr = pytest.importorskip("captum.attr")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from xai_jax import explain, models  # noqa: E402
from xai_jax.metrics import sanity  # noqa: E402
from xai_jax.models import inception, port, taps  # noqa: E402

tv_inception = torchvision.models.inception

pytestmark = pytest.mark.torch

NUM_CLASSES = 10
TARGET = [3, 7]
# Adebayo et al. (2018), Sec. 4 and Fig. 2: logits, then the 16 blocks from the top (17 phases).
ADEBAYO_ORDER = ("fc", "Mixed_7c", "Mixed_7b", "Mixed_7a", "Mixed_6e", "Mixed_6d", "Mixed_6c",
                 "Mixed_6b", "Mixed_6a", "Mixed_5d", "Mixed_5c", "Mixed_5b", "Conv2d_4a_3x3",
                 "Conv2d_3b_1x1", "Conv2d_2b_3x3", "Conv2d_2a_3x3", "Conv2d_1a_3x3")


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.abs(a - b).max() / np.abs(b).max())


def _nhwc(t):
  return np.ascontiguousarray(t.detach().permute(0, 2, 3, 1).numpy())


def _randomize(net, seed):
  """He-scaled conv weights, random fc biases, random batch norms (eval mode)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.Conv2d):
        fan_in = m.weight[0].numel()
        m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=g)
      if isinstance(m, torch.nn.Linear):
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=g))
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
  return net.eval()


def _torch_net(seed=0, **kwargs):
  torch.manual_seed(seed)
  net = torchvision.models.inception_v3(weights=None, num_classes=NUM_CLASSES,
                                        init_weights=False, **kwargs)
  return _randomize(net, seed + 1)


@functools.lru_cache(maxsize=None)
def _setup():
  """(torch net with its aux head, Flax variables float32 without it)."""
  net = _torch_net()
  return net, port.from_torchvision("inception_v3", net.state_dict())


def _input(n, size, seed):
  return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------
# Architecture, porting, logits.
# ---------------------------------------------------------------------------


@pytest.mark.parity
def test_avg_pool_counts_padding_like_torch():
  """InceptionA/C/E's branch pool: zero padding counts in the divisor (corner / 9, not / 4)."""
  x = torch.randn(2, 3, 11, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
  with jax.enable_x64(True):
    for window, stride, padding in ((3, 1, 1), (5, 3, 0)):
      ref = torch.nn.functional.avg_pool2d(x, window, stride, padding)
      got = inception.avg_pool(jnp.asarray(_nhwc(x)), window=window, stride=stride,
                               padding=padding)
      np.testing.assert_allclose(got, _nhwc(ref), rtol=1e-14, atol=0)
    corner = x[0, :, :2, :2].sum((1, 2)).numpy() / 9  # 4 pixels and 5 zeros, divided by 9
    got = inception.avg_pool(jnp.asarray(_nhwc(x)), window=3, stride=1, padding=1)
    np.testing.assert_allclose(np.asarray(got)[0, 0, 0], corner, rtol=1e-14)


@pytest.mark.slow
def test_parameter_count_names_and_contract_sites():
  # torchvision's documented count (with the auxiliary head, 1000 classes).
  x = jax.ShapeDtypeStruct((1, 299, 299, 3), jnp.float32)
  with_aux = models.get("inception_v3", aux_logits=True)
  v = jax.eval_shape(lambda x: with_aux.init(jax.random.key(0), x), x)
  assert sum(math.prod(a.shape) for a in jax.tree.leaves(v["params"])) == 27_161_264
  model = models.get("inception_v3", num_classes=NUM_CLASSES)
  v = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), x)
  assert set(v["params"]) == set(inception.BLOCKS + ("fc",))
  calls = {"relu": 0, "pool": 0}

  def relu(x):
    calls["relu"] += 1
    return jax.nn.relu(x)

  def pool(x, **kw):
    calls["pool"] += 1
    return taps.max_pool(x, **kw)

  custom = taps.with_ops(model, taps.Ops(relu=relu, max_pool=pool))
  acts = taps.activation_names(custom, v, x)
  biases = taps.bias_site_names(model, v, x)
  # 94 BasicConv2d (one ReLU and one batch norm each), 4 max-pools, 11 Mixed blocks.
  assert (calls["relu"], calls["pool"]) == (94, 4)
  assert len(acts) == 94 + 11 and len(biases) == 94 + 1
  assert acts[0] == "Conv2d_1a_3x3/relu" and acts[-1] == "Mixed_7c/output"
  assert "Mixed_5b/branch5x5_2/relu" in acts and biases[-1] == "fc/bias"
  assert taps.default_gradcam_layer(model) == "Mixed_7c/output"
  with pytest.raises(ValueError, match="75x75"):
    jax.eval_shape(model.apply, v, jax.ShapeDtypeStruct((1, 74, 90, 3), jnp.float32))
  with pytest.raises(ValueError, match="head"):
    jax.eval_shape(models.get("inception_v3", head="tjoa").apply, v, x)
  small = jax.ShapeDtypeStruct((1, 107, 107, 3), jnp.float32)
  with pytest.raises(ValueError, match="at least 299x299"):  # the aux head, as torchvision
    jax.eval_shape(lambda x: with_aux.init(jax.random.key(0), x), small)
  assert jax.eval_shape(with_aux.apply, jax.eval_shape(
      lambda x: with_aux.init(jax.random.key(0), x), x), small).shape == (1, 1000)


@pytest.mark.slow
def test_layer_order_is_adebayo_cascading_order():
  _, variables = _setup()
  model = models.get("inception_v3", num_classes=NUM_CLASSES)
  order = sanity.layer_order(model, variables, jnp.zeros((1, 299, 299, 3)))
  assert order == ADEBAYO_ORDER and len(order) == 17


@pytest.mark.slow
def test_port_handles_the_auxiliary_head():
  net, variables = _setup()
  state = net.state_dict()
  aux_keys = [k for k in state if k.startswith("AuxLogits.")]
  assert aux_keys  # torchvision keeps the head even in eval mode
  expected = port._expected_keys("inception_v3", num_classes=NUM_CLASSES)
  assert set(expected) == {k for k in state if not k.startswith("AuxLogits.")
                           and not k.endswith("num_batches_tracked")}
  assert "AuxLogits" not in variables["params"]
  np.testing.assert_array_equal(
      variables["params"]["Mixed_5b"]["branch5x5_1"]["conv"]["kernel"],
      state["Mixed_5b.branch5x5_1.conv.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["batch_stats"]["Mixed_7c"]["branch3x3_2b"]["bn"]["var"],
                                state["Mixed_7c.branch3x3_2b.bn.running_var"].numpy())
  # A state dict without the head (aux_logits=False) ports to the same variables.
  no_aux = {k: v for k, v in state.items() if k not in aux_keys}
  same = port.from_torchvision("inception_v3", no_aux)
  jax.tree.map(np.testing.assert_array_equal, same, variables)
  # With aux_logits=True the head is mapped, and required.
  with_aux = port.from_torchvision("inception_v3", state, aux_logits=True)
  np.testing.assert_array_equal(with_aux["params"]["AuxLogits"]["fc"]["kernel"],
                                state["AuxLogits.fc.weight"].numpy().T)
  with pytest.raises(ValueError, match=r"missing keys \(12\): AuxLogits.conv0.bn.bias"):
    port.from_torchvision("inception_v3", no_aux, aux_logits=True)


@pytest.mark.slow
@pytest.mark.parity
@pytest.mark.parametrize("size,batch", [(299, 1), (107, 2)])
def test_logits_match_torchvision(size, batch):
  net, variables = _setup()
  model = models.get("inception_v3", num_classes=NUM_CLASSES)
  x = _input(batch, size, seed=size)
  with torch.no_grad():
    ref = net(x).numpy()
  got = jax.jit(model.apply)(variables, jnp.asarray(_nhwc(x)))
  assert got.dtype == jnp.float32
  err = _rel(got, ref)
  assert err < 1e-5, err


@pytest.mark.slow
@pytest.mark.parity
def test_transform_input_matches_torchvision():
  net, variables = _setup()
  tnet = copy.deepcopy(net)
  tnet.transform_input = True
  model = models.get("inception_v3", num_classes=NUM_CLASSES, transform_input=True)
  x = _input(2, 107, seed=5)
  with torch.no_grad():
    ref, plain = tnet(x).numpy(), net(x).numpy()
  got = jax.jit(model.apply)(variables, jnp.asarray(_nhwc(x)))
  assert _rel(got, ref) < 1e-5
  assert _rel(plain, ref) > 1e-2  # the option matters


@pytest.mark.slow
def test_port_weights_cli_records_the_model_options(tmp_path):
  """`experiments.port_weights` on Inception v3: the head is `fc`, and `model.json` keeps
  `transform_input` (True for torchvision's pretrained weights, False for a state dict
  file), so `port.load` rebuilds the model the weights were made for."""
  from xai_jax.pipelines import port_weights  # pylint: disable=import-outside-toplevel
  assert port_weights.model_options("inception_v3", pretrained=True) == {
      "transform_input": True}
  assert port_weights.model_options("vgg16", pretrained=True) == {}
  net, _ = _setup()
  path = tmp_path / "inception.pth"
  torch.save(net.state_dict(), path)
  port_weights.run("inception_v3", str(tmp_path / "out"), state_dict=str(path))
  model, variables = port.load(str(tmp_path / "out"))
  assert (model.num_classes, model.transform_input) == (NUM_CLASSES, False)
  x = _input(1, 107, seed=11)
  with torch.no_grad():
    ref = net(x).numpy()
  assert _rel(jax.jit(model.apply)(variables, jnp.asarray(_nhwc(x))), ref) < 1e-5


@pytest.mark.parity
@pytest.mark.slow
def test_train_mode_with_aux_head_matches_torchvision():
  """Batch statistics, aux logits (299x299 only, as torchvision) and running-stat updates.

  float64: AuxLogits.conv1's batch norm normalises N values (its map is 1x1), which
  amplifies float32 rounding to ~3e-4.
  """
  net, _ = _setup()
  tnet = copy.deepcopy(net).double().train()
  tnet.dropout.p = 0.0  # the main logits then do not depend on a dropout mask
  state = {k: v.float() for k, v in tnet.state_dict().items()}
  x = _input(2, 299, seed=7).double()
  with torch.no_grad():
    ref = tnet(x)
  updated = port.from_torchvision("inception_v3", tnet.state_dict(), aux_logits=True)
  with jax.enable_x64(True):
    model = models.get("inception_v3", num_classes=NUM_CLASSES, aux_logits=True, dropout=0.0,
                       dtype=jnp.float64)
    # float32 weights (as ported) are exact in float64 on both sides.
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), port.from_torchvision(
        "inception_v3", state, aux_logits=True))
    out, updates = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))(
        variables, jnp.asarray(_nhwc(x)))
    assert isinstance(out, inception.InceptionOutputs)
    assert _rel(out.logits, ref.logits.numpy()) < 1e-10
    assert _rel(out.aux_logits, ref.aux_logits.numpy()) < 1e-10
    errs = jax.tree.map(_rel, updates["batch_stats"], updated["batch_stats"])
    assert max(jax.tree.leaves(errs)) < 1e-6  # the updated torch statistics, ported to float32
    # Eval mode: plain logits, the aux head unused.
    logits = jax.eval_shape(model.apply, variables, jnp.zeros((1, 299, 299, 3)))
    assert logits.shape == (1, NUM_CLASSES)


# ---------------------------------------------------------------------------
# Captum parity, float64.
# ---------------------------------------------------------------------------


def _hookable(net, *, isolate_pool_input=True):
  """One out-of-place nn.ReLU per BasicConv2d and nn.MaxPool2d modules in InceptionB/D.

  With `isolate_pool_input`, InceptionB/D's pool gets its own copy of the block input
  (`x.clone()`, the identity); see `test_guided_backprop_and_deeplift_match_captum_float64`.
  """
  net = copy.deepcopy(net)
  isolate = (lambda x: x.clone()) if isolate_pool_input else (lambda x: x)
  for m in net.modules():
    if isinstance(m, tv_inception.BasicConv2d):
      m.relu = torch.nn.ReLU()
      m.forward = types.MethodType(lambda self, x: self.relu(self.bn(self.conv(x))), m)
    elif isinstance(m, tv_inception.InceptionB):
      m.pool = torch.nn.MaxPool2d(3, 2)
      m._forward = types.MethodType(lambda self, x: [  # pylint: disable=protected-access
          self.branch3x3(x),
          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
          self.pool(isolate(x))], m)
    elif isinstance(m, tv_inception.InceptionD):
      m.pool = torch.nn.MaxPool2d(3, 2)
      m._forward = types.MethodType(lambda self, x: [  # pylint: disable=protected-access
          self.branch3x3_2(self.branch3x3_1(x)),
          self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))),
          self.pool(isolate(x))], m)
  return net


@functools.lru_cache(maxsize=None)
def _setup64():
  """(hookable torch net float64, Flax model float64, variables float64, x torch, x jax)."""
  net, variables = _setup()
  net64 = _hookable(net).double()
  x = _input(2, 107, seed=13).double()
  with torch.no_grad():  # the hookable twin computes the same function
    ref = copy.deepcopy(net).double()(x)
    np.testing.assert_allclose(net64(x).numpy(), ref.numpy(), rtol=1e-12, atol=0)
  with jax.enable_x64(True):
    model = models.get("inception_v3", num_classes=NUM_CLASSES, dtype=jnp.float64)
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    return net64, model, v64, x, jnp.asarray(_nhwc(x))


CAPTUM_TOL = 1e-9


@pytest.mark.parity
@pytest.mark.slow
def test_gradients_and_integrated_gradients_match_captum_float64():
  net64, model, v64, x, xj = _setup64()
  target = torch.tensor(TARGET)
  baseline = 0.1 * _input(1, 107, seed=17).double()
  with jax.enable_x64(True):
    t = jnp.asarray(TARGET)
    sal = captum_attr.Saliency(net64).attribute(x, target=target, abs=False)
    grad = explain.gradient(model, v64, xj, t)
    assert grad.dtype == jnp.float64
    assert _rel(grad, _nhwc(sal)) < CAPTUM_TOL
    ixg = captum_attr.InputXGradient(net64).attribute(x, target=target)
    assert _rel(explain.input_x_gradient(model, v64, xj, t), _nhwc(ixg)) < CAPTUM_TOL
    # Nodes 1/8, 3/8, 5/8, 7/8 and weights 1/4 are exact in float32 (see the module docstring).
    ref = captum_attr.IntegratedGradients(net64).attribute(
        x, baselines=baseline, target=target, n_steps=4, method="riemann_middle")
    got = explain.integrated_gradients(model, v64, xj, t, baseline=jnp.asarray(_nhwc(baseline)),
                                       steps=4, rule="riemann_middle")
    assert _rel(got, _nhwc(ref)) < CAPTUM_TOL


@pytest.mark.parity
@pytest.mark.slow
def test_guided_backprop_and_deeplift_match_captum_float64():
  """Captum's DeepLift replaces the gradient of a hooked module's INPUT TENSOR with its
  rule's result (a tensor hook, `captum._utils.common._register_backward_hook`); in
  InceptionB/D that tensor (the block input) also feeds the conv branches, whose gradient
  Captum thereby discards. Fed its own copy, the pool is hooked alone and Captum computes
  the rescale / max-pool rules that `captum_compat=True` reproduces (with Captum's stem
  ReLU -> MaxPool chain quirk). Without the copy Captum's attributions change by more than
  10% (checked); xai_jax does not imitate that: a JAX op cannot see its input's other
  consumers."""
  net64, model, v64, x, xj = _setup64()
  target = torch.tensor(TARGET)
  baseline = 0.2 * _input(2, 107, seed=19).double()
  with jax.enable_x64(True):
    t = jnp.asarray(TARGET)
    ref = captum_attr.GuidedBackprop(net64).attribute(x.clone(), target=target)
    got = explain.guided_backprop(model, v64, xj, t)
    assert _rel(got, _nhwc(ref)) < CAPTUM_TOL
    # GuidedBackprop differs from the plain gradient (Captum saw the ReLUs).
    assert _rel(explain.gradient(model, v64, xj, t), _nhwc(ref)) > 1e-2
    ref, ref_delta = captum_attr.DeepLift(net64).attribute(
        x, baseline, target=target, return_convergence_delta=True)
    got, delta = explain.deeplift(model, v64, xj, t, baseline=jnp.asarray(_nhwc(baseline)),
                                  captum_compat=True, return_delta=True)
    assert _rel(got, _nhwc(ref)) < CAPTUM_TOL
    np.testing.assert_allclose(delta, ref_delta.detach().numpy(), rtol=1e-7, atol=1e-9)
    shared = _hookable(_setup()[0], isolate_pool_input=False).double()
    ref_shared, shared_delta = captum_attr.DeepLift(shared).attribute(
        x, baseline, target=target, return_convergence_delta=True)
    assert _rel(ref_shared.detach().numpy(), ref.detach().numpy()) > 0.1
    assert np.abs(shared_delta.detach().numpy() - ref_delta.detach().numpy()).max() > 0.1
    # xai_jax's default chain rule is complete: attributions sum to f(x) - f(baseline).
    _, exact_delta = explain.deeplift(model, v64, xj, t, baseline=jnp.asarray(_nhwc(baseline)),
                                      return_delta=True)
    with torch.no_grad():
      scale = float(torch.cat([net64(x), net64(baseline)]).abs().max())
    assert np.max(np.abs(exact_delta)) < 1e-10 * scale


@pytest.mark.parity
@pytest.mark.slow
def test_gradcam_and_guided_gradcam_match_captum_float64():
  net64, model, v64, x, xj = _setup64()
  target = torch.tensor(TARGET)
  with jax.enable_x64(True):
    t = jnp.asarray(TARGET)
    lgc = captum_attr.LayerGradCam(net64, net64.Mixed_7c)
    raw = lgc.attribute(x.clone(), target=target)
    assert raw.shape[2:] == (2, 2)
    ref = captum_attr.LayerAttribution.interpolate(raw, tuple(x.shape[2:]))[:, 0]
    assert _rel(explain.gradcam(model, v64, xj, t), ref.detach().numpy()) < CAPTUM_TOL
    ref = captum_attr.GuidedGradCam(net64, net64.Mixed_7c).attribute(x.clone(), target=target)
    assert _rel(explain.guided_gradcam(model, v64, xj, t), _nhwc(ref)) < CAPTUM_TOL
