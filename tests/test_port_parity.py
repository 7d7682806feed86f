"""Parity of xai_jax.models with torchvision, weight for weight (needs torch).

Every torchvision architecture is built with random weights, random biases and
random batch-norm statistics, ported with `port.from_torchvision`, and its
logits are compared with torch's at 224x224 and at two smaller sizes (one not
square; VGG/AlexNet there exercise adaptive pooling with repeated/overlapping
bins). Relative error = max|jax - torch| / max|torch| < 1e-4 in float32.

Forward passes only, so float32 is enough on any CPU: max-pooling is continuous
(a near-tie between two window values changes the output by at most their gap,
~1e-7 relative, whichever one the rounding picks) and no logit is a small
difference of large terms, so the error stays at the ~1e-6 of float32
accumulation through 19 layers whatever kernels torch and XLA pick
(`python tests/emulate_cpu.py avx2 -- tests/test_port_parity.py` checks with
another CPU's). The FullGrad completeness identity is checked in float64.
"""

import sys
import urllib.error

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from xai_jax import models  # noqa: E402
from xai_jax.models import port, taps  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.parity, pytest.mark.slow]

ARCHS = ("alexnet", "vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn",
         "vgg16_bn", "vgg19_bn", "resnet18", "resnet34", "resnet50")
NUM_CLASSES = 7
RTOL = 1e-4


def _randomise(module: "torch.nn.Module", seed: int) -> "torch.nn.Module":
  """Random biases and batch-norm affine parameters and running statistics."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
        m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g))
        m.running_mean.copy_(0.2 * torch.randn(m.running_mean.shape, generator=g))
        m.running_var.copy_(1.5 * torch.rand(m.running_var.shape, generator=g) + 0.5)
      elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
        m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
  return module.eval()


def _rel_err(got, ref):
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  return float(np.abs(got - ref).max() / np.abs(ref).max())


def _compare(tmodel, model, variables, shape, seed):
  """Relative error of the JAX logits vs torch's on a random NCHW batch."""
  x = torch.rand(shape, generator=torch.Generator().manual_seed(seed))
  with torch.no_grad():
    ref = tmodel(x).numpy()
  got = jax.jit(model.apply)(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)))
  assert got.shape == ref.shape
  return _rel_err(got, ref)


@pytest.fixture(scope="module", params=ARCHS)
def ported(request):
  name = request.param
  torch.manual_seed(ARCHS.index(name))
  tmodel = _randomise(getattr(torchvision.models, name)(weights=None,
                                                       num_classes=NUM_CLASSES),
                      seed=ARCHS.index(name))
  variables = port.from_torchvision(name, tmodel.state_dict())  # num_classes inferred
  yield name, tmodel, models.get(name, num_classes=NUM_CLASSES), variables


# every arch at 224 once, the other sizes small; batch 1-2.
SIZES = [(1, 3, 224, 224), (2, 3, 64, 64), (1, 3, 96, 128)]


def test_logits_match_torchvision(ported):
  name, tmodel, model, variables = ported
  errors = {}
  for i, shape in enumerate(SIZES):
    errors[shape[2:]] = _compare(tmodel, model, variables, shape, seed=i)
  sys.stdout.write(f"\n{name}: max relative error " + ", ".join(
      f"{h}x{w}: {e:.2e}" for (h, w), e in errors.items()) + "\n")
  assert max(errors.values()) < RTOL, errors


def test_numpy_state_dict_equals_torch_tensors_and_num_classes():
  tmodel = _randomise(torchvision.models.resnet18(num_classes=NUM_CLASSES), seed=11)
  variables = port.from_torchvision("resnet18", tmodel.state_dict())
  sd = {k: v.numpy() for k, v in tmodel.state_dict().items()}
  assert any(k.endswith("num_batches_tracked") for k in sd)  # and they are ignored
  from_numpy = port.from_torchvision("resnet18", sd, num_classes=NUM_CLASSES)
  jax.tree.map(np.testing.assert_array_equal, from_numpy, variables)
  model = models.get("resnet18", num_classes=NUM_CLASSES)
  assert jax.tree.structure(variables) == jax.tree.structure(
      jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3)))))
  np.testing.assert_array_equal(  # conv OIHW -> HWIO, linear [out, in] -> [in, out]
      variables["params"]["layer1_0"]["conv1"]["kernel"],
      sd["layer1.0.conv1.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(variables["params"]["fc"]["kernel"], sd["fc.weight"].T)
  np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], sd["bn1.running_var"])
  with pytest.raises(ValueError, match=r"fc.weight: got \(7, 512\), expected \(3, 512\)"):
    port.from_torchvision("resnet18", sd, num_classes=3)


def test_fullgrad_completeness_on_ported_vgg11_bn():
  """reference-semantics B: sum(x * dx) + sum(bias terms) == target logit.

  An identity, checked in float64 to 1e-10: in float32 the 20 terms (of both signs) carry
  rounding errors of the CPU's kernels, so only a loose tolerance would hold everywhere.
  """
  tmodel = _randomise(torchvision.models.vgg11_bn(num_classes=NUM_CLASSES), seed=1)
  variables = port.from_torchvision("vgg11_bn", tmodel.state_dict())
  with jax.enable_x64(True):
    model = models.get("vgg11_bn", num_classes=NUM_CLASSES, dtype=jnp.float64)
    variables = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    x = jax.random.normal(jax.random.key(0), (1, 32, 32, 3), jnp.float64)
    out = jax.jit(lambda v, x: taps.tap_gradients(model, v, x, jnp.array([2])))(variables, x)
    terms = np.array([jnp.sum(x * out.input_grad)] + [
        jnp.sum(g * out.biases[k]) for k, g in out.bias_grads.items()], np.float64)
    logit = float(out.logits[0, 2])
  assert len(terms) == 1 + 19
  np.testing.assert_allclose(terms.sum(), logit, rtol=1e-10)
  # Not vacuous: the bias terms matter.
  assert abs(terms[0] - logit) > 1e-3 * abs(logit)


# ---------------------------------------------------------------- Tjoa heads


class _TjoaVGG(torch.nn.Module):
  """Tjoa & Guan's adjusted VGG (cells.md section 3)."""

  def __init__(self, base, num_classes):
    super().__init__()
    self.features, self.avgpool = base.features, base.avgpool
    self.classifier = torch.nn.Sequential(
        torch.nn.Dropout(), torch.nn.Linear(25088, 4096), torch.nn.LeakyReLU(0.01),
        torch.nn.Dropout(), torch.nn.Linear(4096, num_classes), torch.nn.LeakyReLU(0.01))

  def forward(self, x):
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class _TjoaResNet(torch.nn.Module):
  """Tjoa & Guan's adjusted ResNet: global pool, then a 1x1 conv with bias."""

  def __init__(self, base, num_classes):
    super().__init__()
    for k in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3",
              "layer4", "avgpool"):
      setattr(self, k, getattr(base, k))
    self.fc = torch.nn.Conv2d(base.fc.in_features, num_classes, 1)

  def forward(self, x):
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    return self.fc(self.avgpool(x)).flatten(1)


def _tjoa_alexnet(num_classes):
  m = torchvision.models.alexnet(num_classes=num_classes)
  m.classifier[2] = torch.nn.LeakyReLU(0.01)
  m.classifier[5] = torch.nn.LeakyReLU(0.01)
  return m


@pytest.mark.parametrize("name", ["alexnet", "vgg11", "resnet18"])
def test_tjoa_heads_match_torch(name):
  if name == "alexnet":
    tmodel = _tjoa_alexnet(10)
  elif name == "vgg11":
    tmodel = _TjoaVGG(torchvision.models.vgg11(), 10)
  else:
    tmodel = _TjoaResNet(torchvision.models.resnet18(), 10)
  tmodel = _randomise(tmodel, seed=3)
  variables = port.from_torchvision(name, tmodel.state_dict(), head="tjoa")
  model = models.get(name, num_classes=10, head="tjoa")
  err = _compare(tmodel, model, variables, (2, 3, 64, 80), seed=5)
  assert err < RTOL


# ---------------------------------------------------------------- errors


def test_mismatched_state_dict_lists_every_problem_in_one_error():
  sd = dict(torchvision.models.resnet18(num_classes=5).state_dict())
  del sd["layer2.0.bn1.running_var"]
  del sd["layer3.1.conv2.weight"]
  sd["layer5.0.conv1.weight"] = torch.zeros(3)
  sd["layer1.0.conv1.weight"] = torch.zeros(64, 64, 5, 5)
  with pytest.raises(ValueError) as info:
    port.from_torchvision("resnet18", sd)
  msg = str(info.value)
  for key in ("layer2.0.bn1.running_var", "layer3.1.conv2.weight", "layer5.0.conv1.weight",
              "layer1.0.conv1.weight: got (64, 64, 5, 5), expected (64, 64, 3, 3)"):
    assert key in msg
  assert "missing keys (2)" in msg and "unexpected keys (1)" in msg
  assert "shape mismatches (1)" in msg
  with pytest.raises(ValueError, match="valid names"):
    port.from_torchvision("cnn", sd)
  with pytest.raises(ValueError, match="classifier.6.weight"):
    port.from_torchvision("vgg11", {})


# ---------------------------------------------------------------- CLI


def test_port_weights_cli_roundtrip(tmp_path):
  from xai_jax.pipelines import port_weights
  tmodel = _randomise(torchvision.models.resnet18(num_classes=6), seed=7)
  path = tmp_path / "resnet18.pth"
  torch.save(tmodel.state_dict(), path)
  port_weights.run("resnet18", str(tmp_path / "out"), state_dict=str(path))
  model, variables = port.load(str(tmp_path / "out"))
  assert model.num_classes == 6
  err = _compare(tmodel, model, variables, (1, 3, 64, 64), seed=8)
  assert err < RTOL


def test_port_weights_without_network_fails_clearly(tmp_path, monkeypatch):
  from xai_jax.pipelines import port_weights
  import torchvision.models._api as api

  def offline(*args, **kwargs):
    raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

  monkeypatch.setattr(api, "load_state_dict_from_url", offline)
  with pytest.raises(port_weights.PretrainedUnavailable) as info:
    port_weights.run("vgg16", str(tmp_path / "out"))
  msg = str(info.value)
  assert "vgg16" in msg and "internet" in msg and "--state_dict" in msg
  assert "download.pytorch.org" in msg
  assert not (tmp_path / "out").exists()


def test_transplant_into_alexnet_plus_with_new_tjoa_head():
  tmodel = _randomise(torchvision.models.alexnet(num_classes=1000), seed=12)
  sd = tmodel.state_dict()
  model = models.get("alexnet_plus", extra_layers=2, num_classes=10)  # tjoa head
  fresh = models.init(model, jax.random.key(0), (1, 224, 224, 3))
  with pytest.raises(ValueError, match=r"missing keys \(4\): extra.0.bias, extra.0.weight"):
    port.from_torchvision("alexnet_plus", sd, num_classes=10, head="tjoa", extra_layers=2)
  v = port.from_torchvision("alexnet_plus", sd, num_classes=10, head="tjoa",
                            extra_layers=2, fresh=fresh)
  p = v["params"]
  np.testing.assert_array_equal(p["features_10"]["kernel"],
                                sd["features.10.weight"].numpy().transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(p["classifier_4"]["kernel"], sd["classifier.4.weight"].numpy().T)
  np.testing.assert_array_equal(p["extra_1"]["kernel"], fresh["params"]["extra_1"]["kernel"])
  np.testing.assert_array_equal(p["classifier_6"]["kernel"],
                                fresh["params"]["classifier_6"]["kernel"])
  assert jax.eval_shape(model.apply, v, jnp.zeros((1, 96, 96, 3))).shape == (1, 10)
  with pytest.raises(ValueError, match="does not fit"):
    port.from_torchvision("alexnet", sd, num_classes=10, fresh=fresh)
