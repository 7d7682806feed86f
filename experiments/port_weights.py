r"""Converts torchvision weights to an orbax checkpoint for `xai_jax.models`.

  python -m experiments.port_weights --arch=vgg16 --out=/tmp/vgg16 \
      [--state_dict=FILE.pth] [--head=torchvision]

Without `--state_dict`, torchvision's default pretrained weights are fetched
(`torchvision.models.get_model_weights(arch).DEFAULT`; needs internet or a
filled torch hub cache). Writes `OUT/variables/` (orbax) and `OUT/model.json`;
restore with `xai_jax.models.port.load(OUT)`. A few seconds per model plus the
download. The library part is `xai_jax.pipelines.port_weights`; torch/torchvision
(the optional extra) are imported only when a torch file is read.
"""

from absl import app
from absl import flags
from absl import logging

from xai_jax import models
from xai_jax.pipelines import port_weights

_ARCH = flags.DEFINE_enum("arch", None, list(models.TORCHVISION_NAMES),
                          "Architecture.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output folder.", required=True)
_STATE_DICT = flags.DEFINE_string(
    "state_dict", None, "A .pth state dict (torch.save); default: torchvision's "
    "pretrained weights.")
_HEAD = flags.DEFINE_enum("head", "torchvision", ["torchvision", "tjoa"],
                          "Classifier head of the state dict.")


def main(argv):
  del argv
  try:
    path = port_weights.run(_ARCH.value, _OUT.value, state_dict=_STATE_DICT.value,
                            head=_HEAD.value)
  except port_weights.PretrainedUnavailable as e:
    raise app.UsageError(str(e)) from None
  logging.info("wrote %s", path)
  print(path)


if __name__ == "__main__":
  app.run(main)
