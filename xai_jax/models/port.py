"""torchvision state dicts -> Flax variables for `xai_jax.models`, weight for weight.

The Flax modules carry torchvision's module names with "." -> "_" per path
component (`features.0` <-> `features_0`, `layer1.0.downsample.1` <->
`layer1_0/downsample_1`), so the mapping is mechanical. Inception v3's names
contain underscores of their own (`Mixed_5b.branch5x5_1.conv`), so its Flax
paths are torchvision's module names verbatim (`Mixed_5b/branch5x5_1/conv`):

| torch key | Flax variable | transform |
|---|---|---|
| `<m>.weight` (Conv2d, [O, I, kh, kw]) | `params/<m>/kernel` [kh, kw, I, O] | transpose (2, 3, 1, 0) |
| `<m>.weight` (Linear, [out, in]) | `params/<m>/kernel` [in, out] | transpose |
| `<m>.bias` | `params/<m>/bias` | - |
| `<m>.weight` / `.bias` (BatchNorm2d) | `params/<m>/scale` / `bias` | - |
| `<m>.running_mean` / `running_var` | `batch_stats/<m>/mean` / `var` | - |

`num_batches_tracked` keys are ignored, and the `module.` prefix of a model
saved inside `DataParallel`/`DistributedDataParallel` and the `_orig_mod.`
prefix of a `torch.compile`d one are stripped when every key carries them
(`strip_wrapper_prefixes`). Linear weights need no permutation
because every model flattens its feature map in torch's NCHW order
(`layers.flatten_nchw`). torch is never imported: tensors are duck-typed
(anything with `.detach()/.cpu()/.numpy()`, or array-likes).
"""

import json
import os
from typing import Any, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
import orbax.checkpoint as ocp

from xai_jax import files
from xai_jax import models as _models

# torch key of the classifier weight whose first dimension is num_classes.
_HEAD_KEYS = {
    ("alexnet", "torchvision"): "classifier.6.weight",
    ("alexnet", "tjoa"): "classifier.6.weight",
    ("alexnet_plus", "torchvision"): "classifier.6.weight",
    ("alexnet_plus", "tjoa"): "classifier.6.weight",
    ("vgg", "torchvision"): "classifier.6.weight",
    ("vgg", "tjoa"): "classifier.4.weight",
    ("resnet", "torchvision"): "fc.weight",
    ("resnet", "tjoa"): "fc.weight",
    ("inception", "torchvision"): "fc.weight",
}


def _family(name: str) -> str:
  for fam in ("alexnet_plus", "alexnet", "vgg", "resnet", "inception"):
    if name.startswith(fam):
      return fam
  raise AssertionError(name)


# Prefixes that torch's wrappers put in front of every key of the wrapped model's state
# dict: DataParallel / DistributedDataParallel (`module.`) and torch.compile (`_orig_mod.`).
WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
  """Removes `module.` / `_orig_mod.` prefixes that every key of a state dict carries.

  A model saved as `torch.nn.DataParallel(model).state_dict()` (or DDP) has keys
  `module.conv1.weight`, ...; a `torch.compile`d one `_orig_mod.conv1.weight`; wrappers
  nest (`module._orig_mod.`). Each prefix is removed only when *every* key has it, repeatedly,
  so a plain state dict (or one where only some keys happen to start with the word) is
  returned unchanged.

  Args:
    state_dict: torch key -> tensor or array.

  Returns:
    A new dict with the common wrapper prefixes removed.
  """
  state = dict(state_dict)
  stripped = []
  while state:
    prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
    if prefix is None:
      break
    state = {k[len(prefix):]: v for k, v in state.items()}
    stripped.append(prefix)
  if stripped:
    logging.info("state dict: stripped the wrapper prefix %r from every key", "".join(stripped))
  return state


def to_numpy(t: Any) -> np.ndarray:
  """A torch tensor (duck-typed, any device/dtype) or array-like -> float32 numpy."""
  if hasattr(t, "detach"):
    t = t.detach()
    if hasattr(t, "cpu"):
      t = t.cpu()
    if "bfloat16" in str(getattr(t, "dtype", "")) and hasattr(t, "float"):
      t = t.float()
  if hasattr(t, "numpy") and not isinstance(t, np.ndarray):
    t = t.numpy()
  return np.asarray(t, dtype=np.float32)


def _init_size(name: str) -> int:
  """Input size used to trace a model's variable shapes (its pools need this much)."""
  if name.startswith("inception"):
    return 299
  return 224 if name.startswith("alexnet") else 64


def _torch_module_path(flax_path: tuple[str, ...], *, verbatim: bool = False) -> str:
  if verbatim:
    return ".".join(flax_path)
  parts = []
  for p in flax_path:
    stem, sep, idx = p.rpartition("_")
    parts.append(f"{stem}.{idx}" if sep and idx.isdigit() else p)
  return ".".join(parts)


def _torch_key_and_shape(collection: str, path: tuple[str, ...], shape, *,
                         verbatim: bool = False):
  """(torch key, expected torch shape, to_flax(np_array)) for one Flax leaf."""
  module, leaf = _torch_module_path(path[:-1], verbatim=verbatim), path[-1]
  if collection == "batch_stats":
    suffix = {"mean": "running_mean", "var": "running_var"}[leaf]
    return f"{module}.{suffix}", tuple(shape), lambda a: a
  if leaf == "kernel" and len(shape) == 4:
    kh, kw, i, o = shape
    return f"{module}.weight", (o, i, kh, kw), lambda a: a.transpose(2, 3, 1, 0)
  if leaf == "kernel" and len(shape) == 2:
    return f"{module}.weight", (shape[1], shape[0]), lambda a: a.T
  if leaf == "scale":
    return f"{module}.weight", tuple(shape), lambda a: a
  if leaf == "bias":
    return f"{module}.bias", tuple(shape), lambda a: a
  raise AssertionError(f"unexpected Flax variable {collection}/{'/'.join(path)}")


def _expected_keys(name: str, *, num_classes: int = 1000,
                  head: str = "torchvision") -> dict[str, tuple[int, ...]]:
  """torch state-dict keys (without `num_batches_tracked`) and shapes for a model.

  Args:
    name: one of `xai_jax.models.TORCHVISION_NAMES`.
    num_classes: number of logits.
    head: "torchvision" or "tjoa".

  Returns:
    `{torch_key: torch_shape}`.
  """
  return {k: s for k, (s, _, _) in _layout(name, num_classes, head).items()}


def _flax_shape(torch_shape):
  """Flax shape of a leaf from its torch shape (inverse of the table above)."""
  if len(torch_shape) == 4:
    o, i, kh, kw = torch_shape
    return (kh, kw, i, o)
  if len(torch_shape) == 2:
    return (torch_shape[1], torch_shape[0])
  return tuple(torch_shape)


def _layout(name, num_classes, head, **model_kwargs):
  model = _models.get(name, num_classes=num_classes, head=head, **model_kwargs)
  size = _init_size(name)
  verbatim = _family(name) == "inception"
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  out = {}
  for collection in ("params", "batch_stats"):
    flat = traverse_util.flatten_dict(dict(shapes.get(collection, {})))
    for path, leaf in flat.items():
      key, tshape, fn = _torch_key_and_shape(collection, path, leaf.shape, verbatim=verbatim)
      out[key] = (tshape, fn, (collection,) + path)
  return out


def from_torchvision(name: str, state_dict: Mapping[str, Any], *,
                     num_classes: int | None = None,
                     head: str = "torchvision",
                     fresh: Mapping[str, Any] | None = None,
                     **model_kwargs) -> dict:
  """Converts a torchvision state dict to Flax variables for `models.get(name)`.

  Args:
    name: one of `xai_jax.models.TORCHVISION_NAMES` (`alexnet`, `vgg11`..`vgg19`,
      `vgg*_bn`, `resnet18/34/50`, `inception_v3`). torchvision's Inception3
      state dicts carry the auxiliary classifier (`AuxLogits.*`): those keys
      are ignored unless `aux_logits=True` is passed (then they are mapped and
      required).
    state_dict: mapping of torch keys to torch tensors or numpy arrays, e.g.
      `torchvision.models.vgg16(weights=...).state_dict()`; a `module.` (DataParallel,
      DDP) or `_orig_mod.` (torch.compile) prefix on every key is stripped. With
      `head="tjoa"`, the state dict of Tjoa & Guan's adjusted model (head keys
      as documented in the model modules).
    num_classes: number of logits; inferred from the classifier weight when
      None.
    head: "torchvision" or "tjoa".
    fresh: optional variables of the target model (e.g. `models.init(...)`)
      for transplanting: every variable whose torch key is missing or has
      another shape is taken from `fresh`, and state-dict keys the target has
      no place for are dropped (all listed at INFO level). This is how to
      start Tjoa & Guan's fine-tuning: ImageNet features plus a new head,
      `from_torchvision("vgg16", sd, num_classes=10, head="tjoa", fresh=init)`,
      or `alexnet_plus` (`extra_layers=k`) from torchvision's `alexnet`.
      Requires `num_classes`.
    **model_kwargs: further `models.get` options (`extra_layers`, `aux_logits`).

  Returns:
    `{"params": ..., "batch_stats": ...}` (float32 `jax.Array`s;
    "batch_stats" only for batch-norm models), the same tree as
    `models.init(models.get(name, num_classes=..., head=head), ...)`.

  Raises:
    ValueError: unknown name or head; `fresh` without `num_classes` or not
      fitting the model; or (without `fresh`), in ONE error, every missing
      key, unexpected key and shape mismatch, listed by name.
  """
  portable = _models.TORCHVISION_NAMES + ("alexnet_plus",)
  if name not in portable:
    raise ValueError(f"no torchvision counterpart for {name!r}; valid names: "
                     f"{', '.join(portable)}")
  if fresh is not None and num_classes is None:
    raise ValueError("from_torchvision(fresh=...) needs num_classes")
  if head not in ("torchvision", "tjoa"):
    raise ValueError(f"unknown head {head!r}; valid: 'torchvision', 'tjoa'")
  if not isinstance(state_dict, Mapping):
    raise ValueError(f"state_dict must be a mapping of torch keys to tensors (e.g. "
                     f"model.state_dict()); got {type(state_dict).__name__}")
  state = {k: v for k, v in strip_wrapper_prefixes(state_dict).items()
           if not k.endswith("num_batches_tracked")}
  if num_classes is None:
    head_key = _HEAD_KEYS[(_family(name), head)]
    if head_key not in state:
      raise ValueError(
          f"cannot infer num_classes: {head_key!r} missing from the state dict "
          f"(pass num_classes=)")
    num_classes = int(np.shape(to_numpy(state[head_key]))[0])
  if _family(name) == "inception" and not model_kwargs.get("aux_logits", False):
    # The auxiliary head only exists in train mode; without it the Flax model has no place
    # for its weights, which torchvision keeps even in models used only for inference.
    state = {k: v for k, v in state.items() if not k.startswith("AuxLogits.")}
  layout = _layout(name, num_classes, head, **model_kwargs)
  missing = [k for k in layout if k not in state]
  unexpected = [k for k in state if k not in layout]
  arrays, mismatched = {}, []
  for key, (tshape, fn, path) in layout.items():
    if key not in state:
      continue
    a = to_numpy(state[key])
    if a.shape != tshape:
      mismatched.append(f"{key}: got {a.shape}, expected {tshape}")
      continue
    arrays[path] = jnp.asarray(np.ascontiguousarray(fn(a)))
  if fresh is not None:
    flat_fresh = traverse_util.flatten_dict(
        {k: dict(v) for k, v in dict(fresh).items() if k in ("params", "batch_stats")})
    wanted = {path: shape for shape, _, path in
              ((_flax_shape(t), None, p) for t, _, p in layout.values())}
    bad = sorted("/".join(p) for p in set(wanted) ^ set(flat_fresh))
    bad += ["/".join(p) for p in wanted if p in flat_fresh
            and tuple(np.shape(flat_fresh[p])) != wanted[p]]
    if bad:
      raise ValueError(f"`fresh` does not fit {name!r} (num_classes={num_classes}, "
                       f"head={head!r}): {', '.join(bad)}")
    for path in wanted:
      if path not in arrays:
        arrays[path] = jnp.asarray(flat_fresh[path], jnp.float32)
    logging.info("from_torchvision(%s): kept fresh %s; dropped %s", name,
                 missing + [m.split(":")[0] for m in mismatched], unexpected)
    return traverse_util.unflatten_dict(arrays)
  if missing or unexpected or mismatched:
    lines = [f"state dict does not fit {name!r} (head={head!r}, "
             f"num_classes={num_classes}):"]
    if missing:
      lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    if mismatched:
      lines.append(f"  shape mismatches ({len(mismatched)}): {'; '.join(mismatched)}")
    raise ValueError("\n".join(lines))
  return traverse_util.unflatten_dict(arrays)


def transplant(source: Mapping[str, Any], fresh: Mapping[str, Any]
               ) -> tuple[dict, tuple[str, ...], tuple[str, ...]]:
  """Flax variables of one model carried into another: the start of Tjoa & Guan's fine-tuning.

  Every variable of `fresh` ("params" and "batch_stats") whose path exists in `source` with
  the same shape is taken from `source`; the others (a new head: another number of classes,
  Tjoa & Guan's 1x1-conv ResNet head) keep their fresh values. Variables of `source` that
  `fresh` has no place for are dropped. E.g. ImageNet VGG16 (`load` of an
  `experiments.port_weights` folder) into `models.get("vgg16", num_classes=10, head="tjoa")`.

  Args:
    source: `{"params": ..., "batch_stats": ...}` of the trained model.
    fresh: the same of the target model (e.g. `models.init(...)`).

  Returns:
    `(variables, taken, kept_fresh)`: the target's variables (float32 `jax.Array`s), and the
    "/"-joined paths taken from `source` and kept from `fresh`.

  Raises:
    ValueError: nothing of `source` fits `fresh` (weights of another architecture).
  """
  def flat(tree):
    return traverse_util.flatten_dict(
        {k: dict(v) for k, v in dict(tree).items() if k in ("params", "batch_stats")})
  source_flat, fresh_flat = flat(source), flat(fresh)
  merged, taken, kept = {}, [], []
  for path, value in fresh_flat.items():
    if path in source_flat and np.shape(source_flat[path]) == np.shape(value):
      merged[path] = jnp.asarray(source_flat[path], jnp.float32)
      taken.append("/".join(path))
    else:
      merged[path] = jnp.asarray(value, jnp.float32)
      kept.append("/".join(path))
  if not taken:
    raise ValueError(
        "no variable of the source weights fits the target model (another architecture?); "
        f"target variables: {', '.join(sorted(kept)[:6])}...")
  return traverse_util.unflatten_dict(merged), tuple(taken), tuple(kept)


CHECKPOINT_SUBDIR = "variables"
METADATA_FILE = "model.json"


def save(directory: str, variables: dict, *, arch: str, num_classes: int,
         head: str = "torchvision", source: str = "",
         options: Mapping[str, Any] | None = None) -> str:
  """Writes `variables` as an orbax checkpoint plus a small `model.json`, both recorded.

  Layout: `DIRECTORY/variables/` (orbax StandardCheckpointer) and
  `DIRECTORY/model.json` = `{"arch", "num_classes", "head", "source", "options"}`, each with a
  record of
  its checksums (`.variables.sha256`, `.model.json.sha256`; `xai_jax.files`) that `load`
  checks.

  Args:
    directory: output folder (created; an existing checkpoint is refused by
      orbax).
    variables: Flax variables, e.g. from `from_torchvision`.
    arch: model name for `models.get`.
    num_classes: number of logits.
    head: "torchvision" or "tjoa".
    source: free text (where the weights came from).
    options: further `models.get` options the weights need, e.g. `{"transform_input": True}`
      for torchvision's pretrained Inception v3; `load` passes them back.

  Returns:
    The checkpoint path.
  """
  directory = os.path.abspath(directory)
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, CHECKPOINT_SUBDIR)
  with ocp.StandardCheckpointer() as ckpt:
    ckpt.save(path, variables)
  files.write_directory_record(path)
  files.write_verified(os.path.join(directory, METADATA_FILE), json.dumps(
      {"arch": arch, "num_classes": int(num_classes), "head": head, "source": source,
       "options": dict(options or {})}, indent=2))
  return path


def _fix(directory: str) -> str:
  return (f"the ported weights cannot be recomputed from it: delete {directory} and write "
          "them again with `python -m experiments.port_weights --arch=ARCH "
          f"--out={directory}` (or xai_jax.models.port.save)")


def read_metadata(directory: str) -> dict:
  """`DIRECTORY/model.json` written by `save`, checked against its record.

  Folders written before records existed are read with a `files.DamagedFileWarning`.

  Returns:
    `{"arch", "num_classes", "head", "source"}`.

  Raises:
    files.DamagedFileError: `model.json` is missing, truncated, garbled or incomplete; the
      message names it and says how to write it again.
  """
  directory = os.path.abspath(directory)
  path = os.path.join(directory, METADATA_FILE)
  try:
    data = files.read_verified(path, unrecorded="warn", fix=_fix(directory))
  except FileNotFoundError:
    raise files.DamagedFileError(path, "missing", _fix(directory)) from None
  try:
    meta = json.loads(data)
  except ValueError as error:
    raise files.DamagedFileError(path, f"not valid JSON ({error})", _fix(directory)) from None
  missing = [k for k in ("arch", "num_classes", "head") if not isinstance(meta, dict)
             or k not in meta]
  if missing:
    raise files.DamagedFileError(path, f"lacks {missing}", _fix(directory))
  return meta


def load(directory: str):
  """Restores what `save` wrote, after checking `model.json` and `variables/` against their
  records (folders written before records existed are loaded with a warning).

  Args:
    directory: the folder given to `save`.

  Returns:
    `(model, variables)` with `model = models.get(arch, num_classes=..., head=...,
    **options)` (`options` is empty in folders written before it was recorded).

  Raises:
    files.DamagedFileError: `model.json` or a file of `variables/` is missing, truncated or
      garbled; the message names it and says how to write the weights again.
  """
  directory = os.path.abspath(directory)
  meta = read_metadata(directory)
  path = os.path.join(directory, CHECKPOINT_SUBDIR)
  try:
    files.verify_directory(path, unrecorded="warn", fix=_fix(directory))
  except FileNotFoundError:
    raise files.DamagedFileError(path, "missing", _fix(directory)) from None
  model = _models.get(meta["arch"], num_classes=meta["num_classes"], head=meta["head"],
                      **meta.get("options", {}))
  size = _init_size(meta["arch"])
  target = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3))))
  with ocp.StandardCheckpointer() as ckpt:
    variables = ckpt.restore(path, target)
  return model, dict(variables)
