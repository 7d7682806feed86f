"""Pixel-removal metrics: xai_jax vs the model's forward floor vs Quantus (torch).

Seconds per image for (1) an MoRF perturbation curve of `--steps` removal steps and (2) the
full DeepMaps set (AOPC, AFOC MoRF/LeRF, n_MoRF, n_LeRF) with its delta variants (K = `--k`
other maps per image, DeepMaps Eq. 9), against

  (a) the floor: the same number of batched forward passes of the model alone (jitted, batch
      `--batch`, timed as one pass times the count), and
  (b) Quantus 0.6.0 on the same weights in torch: PixelFlipping (MoRF; `features_in_step` a
      whole number of pixels, adjusted to satisfy Quantus' divisibility assertion, and scaled to
      the same number of steps) and RegionPerturbation (LeRF, `patch_size` with at least
      `--steps` patches, `regions_evaluation=--steps`). The full set in Quantus is 2 curves x
      (1 + K) maps; it is estimated as (1 + K) x (PixelFlipping MoRF + PixelFlipping LeRF on
      negated maps), each measured once over the whole image (Quantus has no AUC-free
      n_MoRF/n_LeRF; the curves are the cost).

Usage:
  python -m benchmarks.metrics                           # small CNN, 64x64, batch 64, 200 steps
  python -m benchmarks.metrics --model vgg16 --size 224 --batch 16 --chunk 2   # GPU
  python -m benchmarks.metrics --size 16 --batch 8 --steps 8 --repeats 1       # tiny, seconds
  python -m benchmarks.metrics --sweep                   # also compare loop="map"/"python"

Timings: median of `--repeats` after a warm-up call (compile excluded); blocked on results.
The full set is 2 x (1 + K) x (P / step + 1) forward passes of the batch (2472 for the
defaults), run once to warm up and `--full-repeats` times: at the defaults on a 2-core CPU
expect tens of minutes in total; pass `--no-full` for the MoRF curve alone.
"""

import argparse
import functools
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from xai_jax import models
from xai_jax import xla
from xai_jax.metrics import pixel_removal as pr


def _median_time(fn, repeats):
  jax.block_until_ready(fn())  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _forward_seconds(apply, variables, x, repeats, inner=5):
  """Seconds of one jitted forward pass of the batch (median over repeats of `inner` calls)."""
  fwd = xla.jit(apply)

  def run():
    out = None
    for _ in range(inner):
      out = fwd(variables, x)
    return out
  return _median_time(run, repeats) / inner


# ------------------------------------------------------------------------------------------
# Torch twins with copied weights.


def _torch_cnn(variables, num_classes):
  """torch twin of `models.CNN` (conv5-32, pool, conv5-64, pool, fc1024, fc; NCHW flatten)."""
  import torch
  p = variables["params"]
  in_ch = np.asarray(p["conv1"]["kernel"]).shape[2]
  fc_in = np.asarray(p["fc1"]["kernel"]).shape[0]
  net = torch.nn.Sequential(
      torch.nn.Conv2d(in_ch, 32, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
      torch.nn.Conv2d(32, 64, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool2d(2, 2),
      torch.nn.Flatten(), torch.nn.Linear(fc_in, 1024), torch.nn.ReLU(),
      torch.nn.Linear(1024, num_classes))
  pairs = [(net[0], "conv1", True), (net[3], "conv2", True), (net[7], "fc1", False),
           (net[9], "fc2", False)]
  with torch.no_grad():
    for layer, name, conv in pairs:
      kernel = np.asarray(p[name]["kernel"])
      kernel = kernel.transpose(3, 2, 0, 1) if conv else kernel.T
      layer.weight.copy_(torch.from_numpy(np.ascontiguousarray(kernel)))
      layer.bias.copy_(torch.from_numpy(np.array(p[name]["bias"])))
  return net.eval()


def _build(args):
  """Returns (flax model, variables, torch model or None)."""
  if args.model == "cnn":
    model = models.get("cnn", num_classes=args.num_classes)
    variables = models.init(model, jax.random.key(0), (1, args.size, args.size, 3))
    torch_model = None
    if args.quantus:
      torch_model = _torch_cnn(variables, args.num_classes)
    return model, variables, torch_model
  model = models.get(args.model, num_classes=args.num_classes)
  if not args.quantus:
    return model, models.init(model, jax.random.key(0), (1, args.size, args.size, 3)), None
  import torch
  import torchvision
  from xai_jax.models import port
  torch.manual_seed(0)
  torch_model = getattr(torchvision.models, args.model)(weights=None,
                                                        num_classes=args.num_classes).eval()
  variables = port.from_torchvision(args.model, torch_model.state_dict(),
                                    num_classes=args.num_classes)
  return model, variables, torch_model


def _check_twins(model, variables, torch_model, x):
  import torch
  with torch.no_grad():
    theirs = torch_model(torch.from_numpy(np.asarray(x[:2]).transpose(0, 3, 1, 2).copy()))
  ours = np.asarray(model.apply(variables, x[:2]))
  err = float(np.max(np.abs(theirs.numpy() - ours)) / (np.max(np.abs(ours)) + 1e-12))
  if err > 1e-3:
    raise RuntimeError(f"torch twin disagrees with the Flax model (relative error {err:.2e})")
  return err


# ------------------------------------------------------------------------------------------


def _quantus_seconds(torch_model, x, target, saliency, args, step):
  """(PixelFlipping MoRF s, its steps, RegionPerturbation LeRF s, its steps, PF full s)."""
  import quantus
  import torch
  device = "cuda" if torch.cuda.is_available() else "cpu"
  torch_model = torch_model.to(device)
  n, h, w, c = x.shape
  p = h * w
  x_nchw = np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))
  a = np.asarray(saliency)[:, None]
  y = np.asarray(target)

  # Quantus asserts H*W % features_in_step == 0; a whole number of pixels is c * k.
  candidates = [c * k for k in range(1, p + 1) if p % (c * k) == 0]
  if not candidates:  # e.g. C = 3 and a power-of-two image: fall back to any divisor of H*W
    candidates = [f for f in range(1, p + 1) if p % f == 0]
  features = min(candidates, key=lambda f: abs(c * p / f - args.steps))
  pf_steps = math.ceil(c * p / features)

  def pixel_flipping(maps):
    metric = quantus.PixelFlipping(features_in_step=features, perturb_baseline=0.0,
                                   disable_warnings=True, display_progressbar=False)
    return metric(model=torch_model, x_batch=x_nchw, y_batch=y, a_batch=maps,
                  channel_first=True, softmax=False, device=device, batch_size=n)

  pf = _median_time(lambda: pixel_flipping(a), args.repeats)
  pf_lerf = _median_time(lambda: pixel_flipping(-a), args.repeats)
  patch = max(1, int(math.floor(math.sqrt(p / args.steps))))
  regions = min(args.steps, math.ceil(h / patch) * math.ceil(w / patch))
  metric = quantus.RegionPerturbation(patch_size=patch, order="lerf", regions_evaluation=regions,
                                      perturb_baseline=0.0, disable_warnings=True,
                                      display_progressbar=False)
  rp = _median_time(lambda: metric(model=torch_model, x_batch=x_nchw, y_batch=y, a_batch=a,
                                   channel_first=True, softmax=False, device=device,
                                   batch_size=n), args.repeats)
  return dict(pf=pf, pf_lerf=pf_lerf, pf_steps=pf_steps, pf_features=features, rp=rp,
              rp_steps=regions, rp_patch=patch)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--model", default="cnn", help="cnn | vgg16 | any models.get name")
  parser.add_argument("--size", type=int, default=None, help="image side (64 cnn, 224 else)")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=200)
  parser.add_argument("--k", type=int, default=5, help="other maps per image for delta")
  parser.add_argument("--chunk", type=int, default=4, help="grid points per forward pass")
  parser.add_argument("--loop", default="map", choices=pr.LOOPS)
  parser.add_argument("--num-classes", type=int, default=None, help="10 cnn, 1000 else")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--full-repeats", type=int, default=1,
                      help="timed repeats of the (long) full set, after its warm-up run")
  parser.add_argument("--no-quantus", dest="quantus", action="store_false")
  parser.add_argument("--no-full", dest="full", action="store_false",
                      help="skip the full DeepMaps set (MoRF curve only)")
  parser.add_argument("--sweep", action="store_true",
                      help="also time the MoRF curve for loop in (map, python) x chunks")
  args = parser.parse_args(argv)
  args.size = args.size or (64 if args.model == "cnn" else 224)
  args.num_classes = args.num_classes or (10 if args.model == "cnn" else 1000)
  if args.full and args.batch < args.k + 1:
    parser.error(f"--batch must be at least --k + 1 = {args.k + 1} (delta draws other maps)")

  print(f"devices: {jax.devices()}  model={args.model} size={args.size} batch={args.batch} "
        f"steps={args.steps} k={args.k} chunk={args.chunk} loop={args.loop}")
  model, variables, torch_model = _build(args)
  kx, ks = jax.random.split(jax.random.key(1))
  x = jax.random.uniform(kx, (args.batch, args.size, args.size, 3))
  saliency = jax.random.normal(ks, (args.batch, args.size, args.size))
  if torch_model is not None:
    print(f"torch twin max relative logit error: {_check_twins(model, variables, torch_model, x):.1e}")
  n = args.batch
  p = args.size * args.size
  step = max(1, p // args.steps)
  fill = jnp.full((3,), 0.5)

  t_fwd = _forward_seconds(models.as_apply(model), variables, x, args.repeats)
  rows = []

  # (1) MoRF curve of exactly `steps` removal steps (+ the unperturbed point).
  curve_fn = functools.partial(pr.perturbation_curve, model, variables, x, saliency,
                               order="morf", step=step, max_fraction=args.steps * step / p,
                               fill=fill, chunk=args.chunk, loop=args.loop)
  t_curve = _median_time(lambda: curve_fn().scores, args.repeats)
  curve_passes = args.steps + 1
  rows.append([f"MoRF curve, {args.steps} steps", curve_passes, t_curve, t_fwd * curve_passes])

  # (2) DeepMaps set + delta: 2 full curves for each of the own and k borrowed maps.
  if args.full:
    # AOPC / AFOC at the grid point nearest 10% (a fraction between grid points is refused).
    fraction = max(1, round(0.1 * p / step)) * step / p
    metric = functools.partial(pr.pixel_removal_metrics, step=step, fraction=fraction,
                               fill=fill, chunk=args.chunk, loop=args.loop)
    full_fn = lambda: pr.delta(metric, model, variables, x, saliency, k=args.k,
                               key=jax.random.key(2))
    t_full = _median_time(lambda: full_fn().delta, args.full_repeats)
    grid = len(range(0, p + 1, step)) + (p % step != 0)
    full_passes = 2 * (1 + args.k) * grid
    rows.append([f"DeepMaps set + delta (K={args.k})", full_passes, t_full, t_fwd * full_passes])

  quantus_row = {}
  if args.quantus:
    target = jnp.argmax(model.apply(variables, x), axis=-1)
    q = _quantus_seconds(torch_model, x, target, saliency, args, step)
    print(f"Quantus PixelFlipping: features_in_step={q['pf_features']} -> {q['pf_steps']} "
          f"steps, {q['pf'] / n:.4g} s/image (MoRF), {q['pf_lerf'] / n:.4g} s/image (LeRF); "
          f"RegionPerturbation LeRF: patch {q['rp_patch']}, {q['rp_steps']} steps, "
          f"{q['rp'] / n:.4g} s/image")
    # Scaled to the same number of steps as the xai_jax curve.
    quantus_row[0] = q["pf"] * args.steps / q["pf_steps"]
    if args.full:
      # Full curves: ceil(P / step) pixel steps each, (1 + k) maps, MoRF and LeRF.
      scale = math.ceil(p / step) / q["pf_steps"]
      quantus_row[1] = (1 + args.k) * (q["pf"] + q["pf_lerf"]) * scale
    rows.append([f"  (Quantus RegionPerturbation LeRF, {q['rp_steps']} steps)",
                 q["rp_steps"] + 1, None, t_fwd * (q["rp_steps"] + 1)])
    quantus_row[len(rows) - 1] = q["rp"]

  print()
  header = (f"{'metric':42s} {'fwd passes':>10s} {'xai_jax s/img':>14s} {'floor s/img':>12s} "
            f"{'xai_jax/floor':>13s} {'Quantus s/img':>14s} {'Quantus/xai_jax':>15s}")
  print(header)
  print("-" * len(header))
  for i, (name, passes, ours, floor) in enumerate(rows):
    theirs = quantus_row.get(i)
    fmt = lambda v, w: f"{v:{w}.4g}" if v is not None else f"{'-':>{w}s}"
    ratio_floor = ours / floor if ours is not None else None
    ratio_q = theirs / ours if (theirs is not None and ours is not None) else None
    print(f"{name:42s} {passes:10d} {fmt(ours and ours / n, 14)} {fmt(floor / n, 12)} "
          f"{fmt(ratio_floor, 13)} {fmt(theirs and theirs / n, 14)} {fmt(ratio_q, 15)}")
  print(f"\nforward pass of the batch: {t_fwd:.4g} s ({t_fwd / n:.4g} s/image); floor = passes x "
        "that. Quantus MoRF scaled to the same steps; full set estimated as (1+K) x (MoRF+LeRF) "
        "PixelFlipping runs.")

  if args.sweep:
    print("\nMoRF curve, loop x chunk (s/image):")
    for loop in pr.LOOPS:
      for chunk in sorted({1, 2, 4, 8, 16, args.chunk}):
        fn = functools.partial(curve_fn, loop=loop, chunk=chunk)
        t = _median_time(lambda: fn().scores, args.repeats)
        print(f"  loop={loop:6s} chunk={chunk:3d}: {t / n:.4g}  (x floor {t / (t_fwd * curve_passes):.3g})")


if __name__ == "__main__":
  main()
