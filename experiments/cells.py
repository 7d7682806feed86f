r"""Tjoa & Guan's workflow on the synthetic cells, end to end (the README's main job).

  python -m experiments.cells --workdir=workdir/cells_quick                  # quick, CPU
  python -m experiments.cells --workdir=workdir/cells_vgg \
      --config=configs/cells.py:paper_vgg                                    # paper scale

Trains a base model and its branches on the cells, explains the test split with every
configured method, scores the maps (five-band, ROC, IOU, pixel removal), and writes tables,
statistics across methods, figures and `WORKDIR/report.md`: `xai_jax.pipelines.cells.run`,
whose docstring lists the steps and outputs. The variants, run times and expected numbers are
in `configs/cells.py`. A rerun resumes; other evaluation fields on a trained workdir reuse the
models and write to `WORKDIR/eval_<hash>/` (`xai_jax.pipelines.workdir`).
"""

from absl import app
from absl import flags
import jax

from experiments import launch
from xai_jax.pipelines import cells


def main(argv):
  del argv
  launch.start()
  if flags.FLAGS.distributed:  # one process per host; the cluster comes from the environment
    jax.distributed.initialize()
  launch.run_and_print(cells.run)


if __name__ == "__main__":
  # Flags are defined here, not at import, so that experiment modules can be imported together
  # (tests) without clashing `--config` / `--workdir` definitions.
  launch.define_config_and_workdir("cells")
  flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host: "
                    "every host runs the command on a shared workdir and takes a share of the "
                    "evaluation shards).")
  app.run(main)
