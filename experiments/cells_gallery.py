r"""Gallery of the synthetic cells and their ground-truth heatmaps (Tjoa & Guan, Fig. 2).

  python -m experiments.cells_gallery --workdir=/tmp/cells_gallery [--size=224] [--seed=0]

Writes `WORKDIR/cells_gallery.png` (10 classes x 3 backgrounds of images, then
the same grid of ground truths: light red 0.4, dark red 0.9) and
`WORKDIR/cells_gallery.npz` (images, heatmaps, labels, backgrounds). About 30 s
on a 2-core CPU at 224 (mostly compilation).
"""

from absl import app
from absl import flags
from absl import logging
import jax

from xai_jax.pipelines import cells_gallery

_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder.", required=True)
_SIZE = flags.DEFINE_integer("size", 224, "Image side length, 32..1024.")
_SEED = flags.DEFINE_integer("seed", 0, "PRNG seed.")


def main(argv):
  del argv
  logging.info("devices: %s", jax.devices())
  png_path, npz_path = cells_gallery.run(_WORKDIR.value, size=_SIZE.value, seed=_SEED.value)
  print(png_path)
  print(npz_path)


if __name__ == "__main__":
  app.run(main)
