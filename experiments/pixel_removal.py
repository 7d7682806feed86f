r"""The DeepMaps pixel-removal protocol: AOPC, AFOC, n_MoRF / n_LeRF and their delta variants.

  python -m experiments.pixel_removal --workdir=workdir/pixel_removal_quick     # cells, CPU
  python -m experiments.pixel_removal --workdir=workdir/pixel_removal_vgg16 \
      --config=configs/pixel_removal.py:paper --config.model.checkpoint=/ckpt/vgg16 \
      --config.data.image_folder=/data/imagenet/val

Removes the pixels every configured method ranks most (MoRF) and least (LeRF) relevant and
scores the model's response: per-image metrics, mean curves, summary, win rates (DeepMaps
Fig. 7), figures and `WORKDIR/report.md`. The pipeline is `xai_jax.pipelines.pixel_removal.run`
(outputs listed in its docstring); the variants, run times and expected numbers are in
`configs/pixel_removal.py`.
"""

from absl import app

from experiments import launch
from xai_jax.pipelines import pixel_removal


def main(argv):
  del argv
  launch.start()
  launch.run_and_print(pixel_removal.run)


if __name__ == "__main__":
  # Flags are defined here, not at import, so that several experiment modules can be imported
  # in one process (tests) without clashing `--config` / `--workdir` definitions.
  launch.define_config_and_workdir("pixel_removal")
  app.run(main)
