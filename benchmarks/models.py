"""Forward and forward+backward throughput of xai_jax.models vs torchvision.

Images/s per architecture at its paper input size, on the same random weights
(a torchvision model with random weights, biases and batch-norm statistics,
ported with `port.from_torchvision`), JAX jitted vs torch eager, eval mode,
float32 on CPU (or the default JAX device and CUDA for torch when available):

- forward: logits of the batch;
- forward+backward: the input gradient of the summed logits of class 0 (the
  cost of a saliency map / one integrated-gradients step).

Cells (papers): AlexNet 224 and VGG16 224 and ResNet34 512 (Tjoa & Guan),
VGG16 224 and ResNet50 224 (DeepMaps), Inception v3 299 (Adebayo et al.).
Timings: median of `--repeats` timed calls after `--warmup` untimed ones
(compilation excluded); blocked on results.

Usage:
  python -m benchmarks.models                                  # paper cells, batch 8
  python -m benchmarks.models --archs=resnet18 --size=64 --batch=2 --repeats=2  # tiny
  python -m benchmarks.models --archs=inception_v3 --batch=2   # at its paper size, 299
  python -m benchmarks.models --no-torch                       # JAX only

On a quiet 2-core CPU the paper cells take a few minutes (VGG16 forward is
15.5 GFLOP per 224x224 image).
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import models
from xai_jax import xla
from xai_jax.models import port

PAPER_CELLS = (("alexnet", 224), ("vgg16", 224), ("resnet34", 512), ("resnet50", 224),
               ("inception_v3", 299))


def _median_seconds(fn, *, warmup, repeats):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _random_torch_model(torch, torchvision, name, num_classes, seed=0):
  torch.manual_seed(seed)
  # Inception3 warns unless told how to initialise; its auxiliary head is unused in eval mode.
  extra = {"init_weights": True} if name == "inception_v3" else {}
  net = getattr(torchvision.models, name)(weights=None, num_classes=num_classes, **extra)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.weight.uniform_(0.5, 1.5)
        m.bias.normal_(0, 0.2)
        m.running_mean.normal_(0, 0.2)
        m.running_var.uniform_(0.5, 2.0)
      elif isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
        m.bias.normal_(0, 0.1)
  return net.eval()


def _jax_fns(model):
  fwd = xla.jit(model.apply)

  @xla.jit
  def fwd_bwd(variables, x):
    return jax.grad(lambda x: model.apply(variables, x)[:, 0].sum())(x)

  return fwd, fwd_bwd


def bench_one(name, size, *, batch, num_classes, warmup, repeats, use_torch):
  """Returns a dict of images/s (and the parity error) for one architecture."""
  row = {"arch": name, "size": size, "batch": batch}
  x_np = np.random.default_rng(0).uniform(size=(batch, size, size, 3)).astype(np.float32)
  model = models.get(name, num_classes=num_classes)
  if use_torch:
    import torch  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top
    device = "cuda" if torch.cuda.is_available() else "cpu"
    net = _random_torch_model(torch, torchvision, name, num_classes)
    variables = port.from_torchvision(name, net.state_dict())
    net = net.to(device)
    for p in net.parameters():  # input gradients only, as Captum computes them
      p.requires_grad_(False)
    xt = torch.from_numpy(x_np.transpose(0, 3, 1, 2).copy()).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def t_fwd():
      with torch.no_grad():
        out = net(xt)
      sync()
      return out

    def t_fwd_bwd():
      x = xt.detach().requires_grad_(True)
      grad, = torch.autograd.grad(net(x)[:, 0].sum(), x)
      sync()
      return grad

    row["torch_fwd"] = batch / _median_seconds(t_fwd, warmup=warmup, repeats=repeats)
    row["torch_fwd_bwd"] = batch / _median_seconds(t_fwd_bwd, warmup=warmup, repeats=repeats)
    torch_logits = t_fwd().cpu().numpy()
  else:
    variables = models.init(model, jax.random.key(0), (1, size, size, 3))
  x = jnp.asarray(x_np)
  fwd, fwd_bwd = _jax_fns(model)
  row["jax_fwd"] = batch / _median_seconds(
      lambda: jax.block_until_ready(fwd(variables, x)), warmup=warmup, repeats=repeats)
  row["jax_fwd_bwd"] = batch / _median_seconds(
      lambda: jax.block_until_ready(fwd_bwd(variables, x)), warmup=warmup, repeats=repeats)
  if use_torch:
    logits = np.asarray(fwd(variables, x))
    row["rel_err"] = float(np.abs(logits - torch_logits).max() / np.abs(torch_logits).max())
  return row


def format_table(rows):
  """Plain-text table; ratio = JAX images/s / torch images/s (> 1: JAX faster)."""
  head = (f"{'arch':<10} {'size':>5} {'batch':>5} | {'fwd jax':>9} {'fwd torch':>9} "
          f"{'ratio':>6} | {'f+b jax':>9} {'f+b torch':>9} {'ratio':>6} | {'rel err':>8}")
  lines = [head, "-" * len(head)]
  for r in rows:
    tf, tb = r.get("torch_fwd"), r.get("torch_fwd_bwd")
    fmt = lambda v: f"{v:9.2f}" if v is not None else f"{'-':>9}"
    ratio = lambda a, b: f"{a / b:6.2f}" if b else f"{'-':>6}"
    err = f"{r['rel_err']:8.1e}" if "rel_err" in r else f"{'-':>8}"
    lines.append(
        f"{r['arch']:<10} {r['size']:>5} {r['batch']:>5} | {fmt(r['jax_fwd'])} {fmt(tf)} "
        f"{ratio(r['jax_fwd'], tf)} | {fmt(r['jax_fwd_bwd'])} {fmt(tb)} "
        f"{ratio(r['jax_fwd_bwd'], tb)} | {err}")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--archs", default=None,
                      help="comma list (default: the paper cells, each at its size)")
  parser.add_argument("--size", type=int, default=None,
                      help="override every input size (default: the paper cell's, else 224)")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--num-classes", type=int, default=1000)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--no-torch", action="store_true", help="JAX only")
  args = parser.parse_args(argv)
  if args.archs:
    cells = [(a, args.size or dict(PAPER_CELLS).get(a, 224)) for a in args.archs.split(",")]
  else:
    cells = [(a, args.size or s) for a, s in PAPER_CELLS]
  for a, _ in cells:
    if a not in models.TORCHVISION_NAMES:
      parser.error(f"unknown arch {a!r}; valid: {', '.join(models.TORCHVISION_NAMES)}")
  print(f"JAX devices: {jax.devices()}")
  rows = []
  for name, size in cells:
    rows.append(bench_one(name, size, batch=args.batch, num_classes=args.num_classes,
                          warmup=args.warmup, repeats=args.repeats,
                          use_torch=not args.no_torch))
    print(format_table(rows[-1:]).splitlines()[-1], flush=True)
  print()
  print(format_table(rows))
  return rows


if __name__ == "__main__":
  main()
