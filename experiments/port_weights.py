r"""Converts torchvision weights to an orbax checkpoint for `xai_jax.models`.

  python -m experiments.port_weights --arch=vgg16 --out=/tmp/vgg16 \
      [--state_dict=FILE.pth] [--head=torchvision]

Without `--state_dict`, torchvision's default pretrained weights are fetched
(`torchvision.models.get_model_weights(arch).DEFAULT`; needs internet or a
filled torch hub cache). Writes `OUT/variables/` (orbax) and `OUT/model.json`;
restore with `xai_jax.models.port.load(OUT)`. A few seconds per model plus the
download. torch/torchvision are imported lazily, only here.
"""

from absl import app
from absl import flags
from absl import logging

from xai_jax import models
from xai_jax.models import port

_ARCH = flags.DEFINE_enum("arch", None, list(models.TORCHVISION_NAMES),
                          "Architecture.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_STATE_DICT = flags.DEFINE_string(
    "state_dict", None, "A .pth state dict (torch.save); default: torchvision's "
    "pretrained weights.")
_HEAD = flags.DEFINE_enum("head", "torchvision", ["torchvision", "tjoa"],
                          "Classifier head of the state dict.")


class PretrainedUnavailable(RuntimeError):
  """torchvision's pretrained weights could not be obtained."""


def pretrained_state_dict(arch: str) -> dict:
  """torchvision's default pretrained state dict for `arch` (downloads it).

  Raises:
    PretrainedUnavailable: torchvision missing, or the download failed.
  """
  try:
    import torchvision  # pylint: disable=g-import-not-at-top
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
  import torch  # pylint: disable=g-import-not-at-top
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
    sd = sd["state_dict"]
  return sd


def run(arch: str, out: str, *, state_dict: str | None = None,
        head: str = "torchvision") -> str:
  """Ports `arch` weights (file or torchvision pretrained) into `out`; returns the path."""
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


def main(argv):
  del argv
  try:
    path = run(_ARCH.value, _OUT.value, state_dict=_STATE_DICT.value, head=_HEAD.value)
  except PretrainedUnavailable as e:
    raise app.UsageError(str(e)) from None
  logging.info("wrote %s", path)
  print(path)


if __name__ == "__main__":
  app.run(main)
