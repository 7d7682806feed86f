"""Explainers side by side: xai_jax against Captum on the same weights and batch.

    python -m benchmarks.explainers                         # full run (lead, quiet machine)
    python -m benchmarks.explainers --models cnn --size 32 --batch 4 --steps 4 \\
        --samples 4 --repeats 1                             # tiny smoke run (~1-2 min)

For every method in `xai_jax.explain.METHODS` and every model it prints seconds
per image for xai_jax and for Captum (the equivalent attribution class on the
torch model whose weights were ported, `xai_jax.models.port.from_torchvision`,
or copied by hand for the small CNN), their ratio, and for the step methods
(integrated gradients, SmoothGrad, GradientShap) the ratio to xai_jax's own
floor: S batched forward+backward passes (S = steps or samples) of the batch.

Step loops are timed in both forms unless `--loops` names one (`loop="python"`: a jitted chunk called from
a Python loop; `loop="lax"`: one jitted `lax.scan` over chunks); the row marked
`*` is the form `loop="auto"` picks on this backend (see
`xai_jax.explain.common`). On XLA:CPU the Python loop is the default because a
gradient inside `lax.scan` loses the fast convolution paths (performance-notes).

Defaults follow the issue: small CNN at 64x64 batch 64; VGG16 and ResNet50 at
224x224 batch 8 (`--models inception_v3`: 299x299 batch 8, Adebayo et al.'s network,
with one `nn.ReLU` per BasicConv2d and `nn.MaxPool2d` modules so Captum's hooks see
them); IG 50 Gauss-Legendre steps; SmoothGrad and GradientShap 20 samples. Captum gets
`internal_batch_size` / `nt_samples_batch_size` equal to xai_jax's rows per call, so both
hold the same number of images in memory
(Captum's GradientShap has no such option and runs all samples at once).
Perturbation methods (occlusion, feature ablation, Shapley value sampling, LIME with
`reference="captum"`, KernelSHAP) use a `--grid` x `--grid` block feature mask (occlusion:
windows of the block size, stride one block), `--samples` permutations for Shapley sampling
and `--perturbation-samples` coalitions for LIME and KernelSHAP; Captum gets
`perturbations_per_eval` equal to xai_jax's perturbations per call (its Lime and KernelShap
still fit one image at a time). Their floor is P batched forward passes of the batch
(P = the method's number of perturbations).
LRP is compared with Captum's `LRP` (epsilon rule); layer SHAP, a step method with
S = `--samples`, with `shap.GradientExplainer((net, layer))` at the Grad-CAM layer (one
class per image; xai_jax runs the same computation: `space="input"`, `guided=False`).
Timings: one warm-up call, then the median of at least `--repeats` calls, repeated
until they add up to `--min-seconds` (2 s) for cheap methods. Methods
without a Captum counterpart (FullGrad, DeepMaps, the baselines) print
xai_jax only; a method that fails prints its error instead of a time.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
import types
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import explain, models
from xai_jax.explain import common

STEP_METHODS = ("integrated_gradients", "smoothgrad", "gradient_shap", "deeplift_shap",
                "layer_shap")
PERTURBATION_METHODS = ("occlusion", "feature_ablation", "shapley_sampling", "lime",
                        "kernel_shap")
DEFAULT_SIZES = {"cnn": 64, "vgg16": 224, "resnet50": 224, "inception_v3": 299}
DEFAULT_BATCH = {"cnn": 64, "vgg16": 8, "resnet50": 8, "inception_v3": 8}
CLASSES = 10


def _block(out):
  jax.tree_util.tree_map(lambda a: a.block_until_ready() if hasattr(a, "block_until_ready")
                         else a, out)
  if "torch" in sys.modules and sys.modules["torch"].cuda.is_available():
    sys.modules["torch"].cuda.synchronize()
  return out


MAX_CALLS = 100


def _time(fn: Callable[[], Any], repeats: int, min_seconds: float) -> float:
  """Median wall seconds of `fn()` after one warm-up call (torch CUDA work synchronised).

  Calls `fn` at least `repeats` times and, for cheap calls, until the timed calls add up to
  `min_seconds` (at most `MAX_CALLS`): a median of three 0.2 s calls moves by 25% between
  runs on a 2-core VM.
  """
  _block(fn())
  times = []
  while len(times) < repeats or (sum(times) < min_seconds and len(times) < MAX_CALLS):
    start = time.perf_counter()
    _block(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


# ---------------------------------------------------------------------------
# Models: torch + flax pairs with identical weights.
# ---------------------------------------------------------------------------


def _torch_cnn(torch, size: int):
  """torch twin of `xai_jax.models.get("cnn")` (Adebayo et al.'s CNN)."""
  nn = torch.nn
  net = nn.Sequential()
  net.add_module("conv1", nn.Conv2d(3, 32, 5, padding=2))
  net.add_module("relu1", nn.ReLU())
  net.add_module("pool1", nn.MaxPool2d(2, 2))
  net.add_module("conv2", nn.Conv2d(32, 64, 5, padding=2))
  net.add_module("relu2", nn.ReLU())
  net.add_module("pool2", nn.MaxPool2d(2, 2))
  net.add_module("flatten", nn.Flatten())
  net.add_module("fc1", nn.Linear(64 * (size // 4) ** 2, 1024))
  net.add_module("relu3", nn.ReLU())
  net.add_module("fc2", nn.Linear(1024, CLASSES))
  return net.eval()


def _cnn_variables(net) -> dict:
  """Flax variables of `models.get("cnn")` from the torch twin's weights."""
  sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  conv = lambda n: {"kernel": jnp.asarray(sd[f"{n}.weight"].transpose(2, 3, 1, 0)),
                    "bias": jnp.asarray(sd[f"{n}.bias"])}
  dense = lambda n: {"kernel": jnp.asarray(sd[f"{n}.weight"].T),
                     "bias": jnp.asarray(sd[f"{n}.bias"])}
  return {"params": {"conv1": conv("conv1"), "conv2": conv("conv2"),
                     "fc1": dense("fc1"), "fc2": dense("fc2")}}


def _split_resnet_relus(torch, torchvision, net):
  """One ReLU module per call site in torchvision's ResNet blocks.

  torchvision reuses each block's `relu` module two or three times, which
  Captum's DeepLift rejects ("A Module ReLU(inplace=True) was detected that
  does not contain some of the input"). The forward pass is unchanged.
  """
  resnet = torchvision.models.resnet
  for block in net.modules():
    if isinstance(block, (resnet.BasicBlock, resnet.Bottleneck)):
      bottleneck = isinstance(block, resnet.Bottleneck)
      block.relus = torch.nn.ModuleList(torch.nn.ReLU() for _ in range(3 if bottleneck else 2))

      def forward(self, x, bottleneck=bottleneck):
        out = self.relus[0](self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if bottleneck:
          out = self.bn3(self.conv3(self.relus[1](out)))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relus[-1](out + identity)

      block.forward = types.MethodType(forward, block)
  return net


def _hookable_inception(torch, torchvision, net):
  """torchvision Inception3 with its nonlinearities as modules Captum can hook.

  BasicConv2d calls `F.relu` and InceptionB/D `F.max_pool2d`, which Captum's
  GuidedBackprop, Deconvolution and DeepLift do not see (they would time a plain
  gradient). Each BasicConv2d gets its own `nn.ReLU`, InceptionB/D an `nn.MaxPool2d`
  fed a copy of the block input (Captum's DeepLift would otherwise replace the
  gradient of that shared tensor, dropping the conv branches'). Same function.
  """
  inception = torchvision.models.inception
  pool_input = lambda x: x.clone()
  for m in net.modules():
    if isinstance(m, inception.BasicConv2d):
      m.relu = torch.nn.ReLU()
      m.forward = types.MethodType(lambda self, x: self.relu(self.bn(self.conv(x))), m)
    elif isinstance(m, inception.InceptionB):
      m.pool = torch.nn.MaxPool2d(3, 2)
      m._forward = types.MethodType(lambda self, x: [  # pylint: disable=protected-access
          self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
          self.pool(pool_input(x))], m)
    elif isinstance(m, inception.InceptionD):
      m.pool = torch.nn.MaxPool2d(3, 2)
      m._forward = types.MethodType(lambda self, x: [  # pylint: disable=protected-access
          self.branch3x3_2(self.branch3x3_1(x)),
          self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x)))),
          self.pool(pool_input(x))], m)
  return net


def build(name: str, size: int, with_torch: bool):
  """(flax model, variables, torch net or None, Grad-CAM torch layer or None)."""
  model = models.get(name, num_classes=CLASSES)
  if not with_torch:
    return model, models.init(model, jax.random.key(0), (1, size, size, 3)), None, None
  import torch  # pylint: disable=import-outside-toplevel
  import torchvision  # pylint: disable=import-outside-toplevel
  from xai_jax.models import port  # pylint: disable=import-outside-toplevel
  torch.manual_seed(0)
  if name == "cnn":
    net = _torch_cnn(torch, size)
    return model, _cnn_variables(net), net, net.relu2
  extra = {"init_weights": True} if name == "inception_v3" else {}
  net = getattr(torchvision.models, name)(weights=None, num_classes=CLASSES, **extra).eval()
  if name.startswith("resnet"):
    net = _split_resnet_relus(torch, torchvision, net)
  if name == "inception_v3":
    net = _hookable_inception(torch, torchvision, net)
  variables = port.from_torchvision(name, net.state_dict())
  layer = (net.features[-2] if name.startswith("vgg") else
           net.Mixed_7c if name == "inception_v3" else net.layer4)
  return model, variables, net, layer


# ---------------------------------------------------------------------------
# Method table.
# ---------------------------------------------------------------------------


def _block_mask(size: int, grid: int) -> np.ndarray:
  """int64 [size, size]: a grid x grid block feature mask, row-major ids."""
  blocks = np.arange(size) * grid // size
  return blocks[:, None] * grid + blocks[None, :]


def _perturbations(name: str, args) -> int:
  """Forward passes of the batch a perturbation method makes (its floor)."""
  grid = getattr(args, "grid", 4)
  return {"occlusion": grid * grid + 1, "feature_ablation": grid * grid + 1,
          "shapley_sampling": args.samples * grid * grid + 1,
          "lime": getattr(args, "perturbation_samples", 50),
          "kernel_shap": getattr(args, "perturbation_samples", 50)}[name]


def _options(name: str, args, x, baselines, rows_chunk: int, loop: str | None) -> dict:
  """xai_jax keyword options for `name` (mirroring the Captum call below)."""
  opts: dict[str, Any] = {}
  if name in PERTURBATION_METHODS:
    grid, size = getattr(args, "grid", 4), x.shape[1]
    opts["chunk"] = rows_chunk
    if name == "occlusion":
      opts.update(sliding_window_shapes=(size // grid,) * 2, strides=size // grid)
    else:
      opts["feature_mask"] = _block_mask(size, grid)
    if name == "shapley_sampling":
      opts.update(samples=args.samples, key=jax.random.key(0))
    elif name in ("lime", "kernel_shap"):
      opts.update(samples=getattr(args, "perturbation_samples", 50), key=jax.random.key(0))
    if name == "lime":
      opts["reference"] = "captum"
  if name == "gradient":
    opts["abs"] = True  # Captum Saliency
  elif name == "integrated_gradients":
    opts.update(steps=args.steps, chunk=rows_chunk)
  elif name == "smoothgrad":
    opts.update(method="gradient", abs=True, key=jax.random.key(0), samples=args.samples,
                stdev=0.1, chunk=rows_chunk)
  elif name == "gradient_shap":
    opts.update(baselines=baselines, key=jax.random.key(0), samples=args.samples,
                chunk=rows_chunk)
  elif name == "deeplift_shap":
    opts.update(baselines=baselines[:2])
  elif name == "layer_shap":  # shap's PyTorch (model, layer) computation, no guided product
    opts.update(background=baselines, key=jax.random.key(0), samples=args.samples,
                space="input", guided=False, chunk=rows_chunk)
  elif name == "random":
    opts["key"] = jax.random.key(0)
  if loop is not None:
    opts["loop"] = loop
  return opts


def _xai_call(name, model, variables, x, target, opts):
  return lambda: explain.explain(name, model, variables, x, target, **opts)


def _captum_lrp(net, xt, tt):
  """Captum's LRP (epsilon 1e-9 everywhere); the small CNN's `nn.Flatten` gets an epsilon
  rule (Captum has no default rule for it and removes rules after every call)."""
  import captum.attr as ca  # pylint: disable=import-outside-toplevel
  from captum.attr._utils.lrp_rules import EpsilonRule  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  for module in net.modules():
    if isinstance(module, torch.nn.Flatten):
      module.rule = EpsilonRule()
  return ca.LRP(net).attribute(xt, target=tt)


def _shap_layer_values(net, xt, bt, samples: int):
  """shap.GradientExplainer((net, module), background) at xai_jax's default Grad-CAM layer.

  shap hooks a module's input: the module after that activation (VGG/AlexNet: the last
  max-pool; the small CNN: `pool2`; ResNet/Inception: `avgpool`). `ranked_outputs=1`
  explains one class per image, as xai_jax does; shap runs an extra one-image forward
  pass per sample to record the layer's input.
  """
  import shap  # pylint: disable=import-outside-toplevel
  module = (net.features[-1] if hasattr(net, "features") else
            net.pool2 if hasattr(net, "pool2") else net.avgpool)
  explainer = shap.GradientExplainer((net, module), bt)
  return explainer.shap_values(xt, nsamples=samples, ranked_outputs=1, rseed=0)


def _captum_call(name, net, layer, xt, tt, bt, args, internal_rows: int, chunk: int):
  """A zero-argument Captum call equivalent to xai_jax's `name`, or None."""
  import captum.attr as ca  # pylint: disable=import-outside-toplevel
  size = tuple(xt.shape[2:])
  table = {
      "gradient": lambda: ca.Saliency(net).attribute(xt, target=tt),
      "input_x_gradient": lambda: ca.InputXGradient(net).attribute(xt, target=tt),
      "integrated_gradients": lambda: ca.IntegratedGradients(net).attribute(
          xt, target=tt, n_steps=args.steps, internal_batch_size=internal_rows),
      "smoothgrad": lambda: ca.NoiseTunnel(ca.Saliency(net)).attribute(
          xt, target=tt, nt_samples=args.samples, nt_samples_batch_size=chunk, stdevs=0.1),
      "gradient_shap": lambda: ca.GradientShap(net).attribute(
          xt, baselines=bt, target=tt, n_samples=args.samples),
      "deeplift": lambda: ca.DeepLift(net).attribute(xt, target=tt),
      "deeplift_shap": lambda: ca.DeepLiftShap(net).attribute(xt, baselines=bt[:2], target=tt),
      "guided_backprop": lambda: ca.GuidedBackprop(net).attribute(xt, target=tt),
      "deconvolution": lambda: ca.Deconvolution(net).attribute(xt, target=tt),
      "gradcam": lambda: ca.LayerAttribution.interpolate(
          ca.LayerGradCam(net, layer).attribute(xt, target=tt), size),
      "guided_gradcam": lambda: ca.GuidedGradCam(net, layer).attribute(xt, target=tt),
      "lrp": lambda: _captum_lrp(net, xt, tt),
      "layer_shap": lambda: _shap_layer_values(net, xt, bt, args.samples),
  }
  if name in PERTURBATION_METHODS:
    import torch  # pylint: disable=import-outside-toplevel
    grid, width = getattr(args, "grid", 4), size[0] // getattr(args, "grid", 4)
    mask = torch.from_numpy(_block_mask(size[0], grid))[None, None].to(xt.device)
    samples = getattr(args, "perturbation_samples", 50)
    table.update({
        "occlusion": lambda: ca.Occlusion(net).attribute(
            xt, sliding_window_shapes=(xt.shape[1], width, width), strides=(1, width, width),
            target=tt, perturbations_per_eval=chunk),
        "feature_ablation": lambda: ca.FeatureAblation(net).attribute(
            xt, target=tt, feature_mask=mask, perturbations_per_eval=chunk),
        "shapley_sampling": lambda: ca.ShapleyValueSampling(net).attribute(
            xt, target=tt, feature_mask=mask, n_samples=args.samples,
            perturbations_per_eval=chunk),
        "lime": lambda: ca.Lime(net).attribute(
            xt, target=tt, feature_mask=mask, n_samples=samples, perturbations_per_eval=chunk),
        "kernel_shap": lambda: ca.KernelShap(net).attribute(
            xt, target=tt, feature_mask=mask, n_samples=samples, perturbations_per_eval=chunk),
    })
  return table.get(name)


def run(args) -> list[dict]:
  """Runs the benchmark; returns one dict per (model, method, loop) row."""
  rows = []
  with_torch = not args.no_captum
  if with_torch:
    import torch  # pylint: disable=import-outside-toplevel
  names = args.methods.split(",") if args.methods else sorted(explain.METHODS)
  unknown = [n for n in names if n not in explain.METHODS]
  if unknown:
    raise ValueError(f"unknown methods {unknown}; valid: {', '.join(sorted(explain.METHODS))}")
  for model_name in args.models.split(","):
    size = args.size or DEFAULT_SIZES.get(model_name, 224)
    batch = args.batch or DEFAULT_BATCH.get(model_name, 8)
    model, variables, net, layer = build(model_name, size, with_torch)
    rng = np.random.default_rng(0)
    x_np = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    base_np = 0.1 * rng.normal(size=(4, size, size, 3)).astype(np.float32)
    x, baselines = jnp.asarray(x_np), jnp.asarray(base_np)
    target = jnp.asarray(rng.integers(0, CLASSES, batch), jnp.int32)
    xt = tt = bt = None
    if with_torch:
      device = "cuda" if torch.cuda.is_available() else "cpu"
      net = net.to(device)
      xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).to(device)
      bt = torch.from_numpy(base_np.transpose(0, 3, 1, 2).copy()).to(device)
      tt = torch.from_numpy(np.asarray(target).astype(np.int64)).to(device)
    chunk = args.chunk or common.default_chunk(max(args.steps, args.samples), x.shape)
    print(f"# {model_name} {size}x{size} batch {batch}, chunk {chunk} steps/call "
          f"({chunk * batch} rows), backend {jax.default_backend()}", flush=True)
    grad_pass = _time(lambda: common.jit_target_gradient(model, variables, x, target),
                      args.repeats, args.min_seconds)
    forward_pass = (_time(lambda: common.jit_target_logits(model, variables, x, target),
                          args.repeats, args.min_seconds)
                    if set(names) & set(PERTURBATION_METHODS) else None)
    for name in names:
      looped = (name in STEP_METHODS and name != "deeplift_shap") or name in PERTURBATION_METHODS
      loops = tuple(args.loops.split(",")) if looped else (None,)
      captum_s = None
      captum_note = ""
      fn = (_captum_call(name, net, layer, xt, tt, bt, args, chunk * batch, chunk)
            if with_torch else None)
      if fn is not None:
        try:
          captum_s = _time(fn, args.repeats, args.min_seconds) / batch
        except Exception as e:  # pylint: disable=broad-except
          captum_note = f"captum error: {type(e).__name__}: {str(e)[:80]}"
      for loop in loops:
        row = {"model": model_name, "size": size, "batch": batch, "method": name,
               "loop": loop or "-", "default": loop in (None, common.default_loop())}
        try:
          opts = _options(name, args, x, baselines, chunk, loop)
          row["xai_s"] = _time(_xai_call(name, model, variables, x, target, opts),
                               args.repeats, args.min_seconds) / batch
        except Exception as e:  # pylint: disable=broad-except
          row["error"] = f"{type(e).__name__}: {str(e)[:100]}"
        row["captum_s"] = captum_s
        if captum_note:
          row["captum_error"] = captum_note
        if "xai_s" in row and captum_s:
          row["ratio_captum"] = row["xai_s"] / captum_s
        passes = {"integrated_gradients": args.steps, "smoothgrad": args.samples,
                  "gradient_shap": args.samples, "layer_shap": args.samples}.get(name)
        if passes and "xai_s" in row:
          row["ratio_floor"] = row["xai_s"] / (passes * grad_pass / batch)
        if name in PERTURBATION_METHODS and "xai_s" in row:
          row["ratio_floor"] = row["xai_s"] / (_perturbations(name, args) * forward_pass
                                               / batch)
        rows.append(row)
        _print_row(row)
  return rows


def _fmt(v, spec):
  return format(v, spec) if isinstance(v, (int, float)) else "-"


def _print_row(row: dict) -> None:
  mark = "*" if row["default"] else " "
  line = (f"{row['model']:>9} {row['method']:>21} {row['loop']:>6}{mark} "
          f"xai {_fmt(row.get('xai_s'), '9.5f')} s/img  captum {_fmt(row.get('captum_s'), '9.5f')}"
          f" s/img  xai/captum {_fmt(row.get('ratio_captum'), '6.2f')}"
          f"  xai/floor {_fmt(row.get('ratio_floor'), '5.2f')}")
  for key in ("error", "captum_error"):
    if key in row:
      line += f"  [{key}: {row[key]}]"
  print(line, flush=True)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--models", default="cnn,vgg16,resnet50",
                      help="comma-separated model names (xai_jax.models.get)")
  parser.add_argument("--methods", default="", help="comma-separated registry names (default all)")
  parser.add_argument("--size", type=int, default=0, help="image size (default per model)")
  parser.add_argument("--batch", type=int, default=0, help="batch size (default per model)")
  parser.add_argument("--steps", type=int, default=50, help="integrated-gradients steps")
  parser.add_argument("--samples", type=int, default=20, help="SmoothGrad / GradientShap samples")
  parser.add_argument("--chunk", type=int, default=0, help="steps per call (default: auto)")
  parser.add_argument("--grid", type=int, default=4,
                      help="perturbation methods: grid x grid block features / windows")
  parser.add_argument("--perturbation-samples", type=int, default=50,
                      help="LIME / KernelSHAP coalitions per image")
  parser.add_argument("--loops", default="python,lax",
                      help="step-loop forms to time for the step methods (python, lax or both)")
  parser.add_argument("--repeats", type=int, default=3, help="least timed calls (median)")
  parser.add_argument("--min-seconds", type=float, default=2.0,
                      help="cheap calls repeat until the timed calls add up to this")
  parser.add_argument("--no-captum", action="store_true", help="time xai_jax only")
  parser.add_argument("--json", default="", help="also write the rows to this JSON file")
  args = parser.parse_args(argv)
  bad_loops = set(args.loops.split(",")) - {"python", "lax"}
  if bad_loops:
    parser.error(f"unknown --loops {sorted(bad_loops)}; valid: python, lax")
  print(f"# jax {jax.__version__} devices {jax.devices()}", flush=True)
  rows = run(args)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


# ---------------------------------------------------------------------------
# Reference timers for `xai_jax.pipelines.timing` (experiments/timing.py).
# ---------------------------------------------------------------------------


def _installed(module: str) -> bool:
  import importlib.util  # pylint: disable=import-outside-toplevel
  return importlib.util.find_spec(module) is not None


@functools.lru_cache(maxsize=4)
def _torch_twin(name: str, size: int):
  """`(net, Grad-CAM layer, device)`: the torch model of `build`, on CUDA when available."""
  import torch  # pylint: disable=import-outside-toplevel
  _, _, net, layer = build(name, size, with_torch=True)
  device = "cuda" if torch.cuda.is_available() else "cpu"
  return net.to(device), layer, device


def _torch_inputs(name, size, x, target, background):
  import torch  # pylint: disable=import-outside-toplevel
  net, layer, device = _torch_twin(name, size)
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).to(device)
  return net, layer, nchw(x), torch.from_numpy(target.astype(np.int64)).to(device), (
      nchw(background) if len(background) else None)


def _registry_names(methods: dict) -> dict:
  return {display: options.get("method_name", display) for display, options in methods.items()}


def _captum_timers(name, size, x, target, background, methods):
  """Captum's GradCam / GuidedGradCam / DeepLift (zero baseline) calls."""
  net, layer, xt, tt, _ = _torch_inputs(name, size, x, target, background)
  args = types.SimpleNamespace(steps=1, samples=1)
  calls = {}
  for display, method in _registry_names(methods).items():
    if method in ("gradcam", "guided_gradcam", "deeplift"):
      calls[display] = _captum_call(method, net, layer, xt, tt, None, args, len(x), 1)
  return calls


def _lime_timers(name, size, x, target, background, methods, batch_size=50):
  """The `lime` package's LimeImageExplainer (its quickshift, `samples` perturbations, one
  image at a time as the package works; `batch_size` perturbed images per forward pass)."""
  import torch  # pylint: disable=import-outside-toplevel
  from lime import lime_image  # pylint: disable=import-outside-toplevel
  net, _, device = _torch_twin(name, size)

  def classify(images):
    with torch.no_grad():
      batch = torch.from_numpy(np.ascontiguousarray(
          images.transpose(0, 3, 1, 2), dtype=np.float32)).to(device)
      return torch.softmax(net(batch), -1).cpu().numpy()

  calls = {}
  for display, method in _registry_names(methods).items():
    if method == "lime":
      samples = methods[display].get("samples", 1000)

      def call(samples=samples):
        explainer = lime_image.LimeImageExplainer(random_state=0)
        return [explainer.explain_instance(
            image.astype(np.float64), classify, labels=(int(t),), top_labels=None,
            num_samples=samples, batch_size=min(batch_size, samples))
                for image, t in zip(x, target)]
      calls[display] = call
  return calls


def _shap_timers(name, size, x, target, background, methods):
  """shap's GradientExplainer at the Grad-CAM layer (`_shap_layer_values`: shap's PyTorch
  (model, layer) computation, without the guided-backprop product)."""
  net, _, xt, _, bt = _torch_inputs(name, size, x, target, background)
  calls = {}
  for display, method in _registry_names(methods).items():
    if method == "layer_shap" and bt is not None:
      samples = methods[display].get("samples", 200)
      calls[display] = lambda samples=samples: _shap_layer_values(net, xt, bt, samples)
  return calls


def reference_timers() -> dict:
  """`{library: factory}` for `xai_jax.pipelines.timing.run(references=...)`: Captum, `lime`
  and `shap`, each where installed (with torch and torchvision). A factory takes
  `(model name, size, x float32[N, H, W, C], target int[N], background float32[M, H, W, C],
  methods {display: options})` and returns `{display name: zero-argument call}` on the torch
  model of `build` (same architecture, `CLASSES` outputs)."""
  if not (_installed("torch") and _installed("torchvision")):
    return {}
  timers = {"captum": _captum_timers, "lime": _lime_timers, "shap": _shap_timers}
  return {library: factory for library, factory in timers.items() if _installed(library)}


if __name__ == "__main__":
  main(sys.argv[1:])
