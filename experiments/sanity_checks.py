r"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018, arXiv:1810.03292).

  python -m experiments.sanity_checks --workdir=/tmp/sanity_quick \
      --config=configs/sanity_checks.py:quick [--config.train.epochs=8 ...]

Trains a classifier on the synthetic cells (or loads a ported checkpoint), explains it with
every configured method, and measures how the explanations change under cascading and
independent model-parameter randomisation and data randomisation; prints the path of
`WORKDIR/report.md`. The pipeline is `xai_jax.pipelines.sanity_checks.run` (the workdir's
files are listed in its docstring); the variants, run times and expected numbers are in
`configs/sanity_checks.py`.
"""

import pathlib

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import launch
from xai_jax.pipelines import sanity_checks


def define_flags() -> list[str]:
  """Defines `--config` and `--workdir` unless defined already; returns those it defined.

  Flags are defined here, not at import, so several experiment modules can be imported
  into one process (tests) without clashing definitions.
  """
  defined = []
  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file(
        "config", None, "Config file and variant, e.g. configs/sanity_checks.py:quick.",
        lock_config=True)
    defined.append("config")
  if "workdir" not in flags.FLAGS:
    flags.DEFINE_string("workdir", None, "Output folder (a rerun resumes).")
    defined.append("workdir")
  return defined


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if flags.FLAGS.config is None or not flags.FLAGS.workdir:
    raise app.UsageError("pass --config=configs/sanity_checks.py:<variant> and --workdir=DIR")
  launch.start()
  sanity_checks.run(flags.FLAGS.config, flags.FLAGS.workdir)
  print(pathlib.Path(flags.FLAGS.workdir) / "report.md")


if __name__ == "__main__":
  define_flags()
  app.run(main)
