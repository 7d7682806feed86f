r"""Pixel-wise localisation of saliency maps: IOU and IOU* (Gattas 2020), split by confidence.

  python -m experiments.localization --workdir=workdir/localization_quick     # cells, CPU
  python -m experiments.localization --workdir=workdir/localization_voc \
      --config=configs/localization.py:paper \
      --config.model.checkpoint=/ckpt/vgg16 --config.data.image_folder=/data/val \
      --config.data.annotations_dir=/data/val_xml

Explains the model's predicted class with every configured method and scores the maps
against object masks (bounding boxes, or the cells' ground truth): summary, confidence split
(Gattas Fig. 4.1, Table 4.1), figures and `WORKDIR/report.md`. The pipeline is
`xai_jax.pipelines.localization.run` (outputs listed in its docstring); the variants, run
times and expected numbers are in `configs/localization.py`.
"""

from absl import app

from experiments import launch
from xai_jax.pipelines import localization


def main(argv):
  del argv
  launch.start()
  launch.run_and_print(localization.run)


if __name__ == "__main__":
  # Flags are defined here, not at import, so that several experiment modules can be imported
  # in one process (tests) without clashing `--config` / `--workdir` definitions.
  launch.define_config_and_workdir("localization")
  app.run(main)
