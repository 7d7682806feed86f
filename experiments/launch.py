"""What every experiment's `main` does first, and the flags the config-driven ones share.

The experiments are thin absl mains over `xai_jax.pipelines`: `--config` (a
`configs/<name>.py:<variant>` file) and `--workdir`, then one call of the pipeline's `run`.
The workdir layout they share is `xai_jax.pipelines.workdir`.
"""

import os
from typing import Any, Callable

from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from xai_jax import reports


def start() -> None:
  """Keeps orbax's per-checkpoint INFO lines off the console (unless `--verbosity` is given)
  and prints the devices the run will use."""
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)
  print(f"devices: {jax.devices()}", flush=True)


def define_config_and_workdir(name: str) -> None:
  """`--config` (default `configs/<name>.py:quick`) and `--workdir` (`workdir/<name>_quick`).

  Called under `if __name__ == "__main__"`, not at import, so that experiment modules can be
  imported together (tests) without clashing flag definitions.
  """
  config_flags.DEFINE_config_file(
      "config", os.path.join(os.path.dirname(__file__), os.pardir, "configs", f"{name}.py:quick"),
      f"Experiment config (configs/{name}.py:<variant>).")
  flags.DEFINE_string("workdir", f"workdir/{name}_quick", "Output folder (a rerun resumes).")


def run_and_print(run: Callable[[Any, str], dict]) -> dict:
  """Calls `run(--config, --workdir)` and prints the summary table and the report's path.

  `run` returns at least `{"summary": DataFrame, "report": path}`.
  """
  outputs = run(flags.FLAGS.config, flags.FLAGS.workdir)
  print(reports.to_markdown(outputs["summary"]))
  print(f"report: {outputs['report']}")
  return outputs
