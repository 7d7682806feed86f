"""Converts torchvision weights to an orbax checkpoint for `xai_jax.models`.

`run(arch, out)` ports torchvision's default pretrained weights
(`torchvision.models.get_model_weights(arch).DEFAULT`; needs internet or a filled torch hub
cache), or a `torch.save`d state dict, and writes `OUT/variables/` (orbax) and
`OUT/model.json`; restore with `xai_jax.models.port.load(OUT)`. A few seconds per model plus
the download. The command line is `python -m experiments.port_weights`.

torch and torchvision are optional dependencies (`pip install -e ".[torch]"`): they are
imported only inside the functions that read torch files, so the rest of the library runs
without them.
"""

from xai_jax.models import port


class PretrainedUnavailable(RuntimeError):
  """torchvision's pretrained weights could not be obtained."""


def pretrained_state_dict(arch: str) -> dict:
  """torchvision's default pretrained state dict for `arch` (downloads it).

  Raises:
    PretrainedUnavailable: torchvision missing, or the download failed.
  """
  try:
    import torchvision  # pylint: disable=g-import-not-at-top  # optional dependency
  except ImportError as e:
    raise PretrainedUnavailable(
        "torchvision is not installed; install the extra "
        "(pip install -r requirements-torch.txt) or pass --state_dict=FILE.pth") from e
  weights = torchvision.models.get_model_weights(arch).DEFAULT
  try:
    return weights.get_state_dict(progress=False)
  except Exception as e:  # URLError, HTTPError, socket errors, hash mismatch
    raise PretrainedUnavailable(
        f"could not fetch torchvision's pretrained weights {weights} for {arch!r} "
        f"from {weights.url} ({type(e).__name__}: {e}). This needs internet access "
        "(or the file in the torch hub cache, $TORCH_HOME/hub/checkpoints). "
        "Alternatively download it elsewhere and pass --state_dict=FILE.pth.") from e


def load_state_dict_file(path: str) -> dict:
  """Reads a `torch.save`d state dict (or a checkpoint with a "state_dict" entry)."""
  import torch  # pylint: disable=g-import-not-at-top  # optional dependency
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
    sd = sd["state_dict"]
  return sd


def run(arch: str, out: str, *, state_dict: str | None = None,
        head: str = "torchvision") -> str:
  """Ports `arch` weights (file or torchvision pretrained) into `out`; returns the path.

  Args:
    arch: a torchvision architecture that `xai_jax.models` has (`models.TORCHVISION_NAMES`).
    out: the output folder.
    state_dict: a `.pth` file (`torch.save`); None fetches torchvision's pretrained weights.
    head: the classifier head of the state dict ("torchvision", or "tjoa" for Tjoa & Guan's
      VGG head).

  Raises:
    PretrainedUnavailable: no `state_dict` and torchvision's weights could not be fetched.
  """
  if state_dict:
    sd, source = load_state_dict_file(state_dict), state_dict
  else:
    sd, source = pretrained_state_dict(arch), "torchvision pretrained (DEFAULT)"
  options = model_options(arch, pretrained=not state_dict)
  variables = port.from_torchvision(arch, sd, head=head, **options)
  num_classes = variables["params"][_head_module(arch, head)]["kernel"].shape[-1]
  return port.save(out, variables, arch=arch, num_classes=num_classes, head=head,
                   source=source, options=options)


def model_options(arch: str, *, pretrained: bool) -> dict:
  """`models.get` options that the weights imply: torchvision builds Inception v3 with
  `transform_input=True` when it loads its pretrained weights (they expect its
  re-normalisation of ImageNet-normalised inputs), and with False otherwise."""
  if arch == "inception_v3":
    return {"transform_input": bool(pretrained)}
  return {}


def _head_module(arch: str, head: str) -> str:
  if arch.startswith(("resnet", "inception")):
    return "fc"
  if arch.startswith("vgg") and head == "tjoa":
    return "classifier_4"
  return "classifier_6"
