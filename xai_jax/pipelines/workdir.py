"""The workdir layout every pipeline shares: trained models apart from evaluation outputs.

A config's fields split into *training* fields (those that define the trained models, listed
by each pipeline: `cells.TRAINING_FIELDS`, `image_experiment.training_fields`,
`sanity_checks.training_fields`) and the rest (*evaluation* fields: methods, metrics, number of
examples, ...). Trained models live in `WORKDIR/train...` with the training fields recorded in
`WORKDIR/train_config.json` (`check_training`); a run whose training fields differ is refused
(the trained models are kept). Evaluation outputs go to `WORKDIR` itself for the first
evaluation config, and a later run with other evaluation fields writes to
`WORKDIR/eval_<hash of its config>/` instead (`evaluation_folder`), reusing the trained models,
so the outputs of two evaluation configs never mix. Both records are written only after the
config is validated, so a refused config leaves nothing behind.
"""

import hashlib
import json
import pathlib
from typing import Any, Mapping, Sequence

from xai_jax import runner

TRAINING_RECORD = "train_config.json"
EVALUATION_RECORD = "config.json"


def check_training(workdir, config: Mapping[str, Any], fields: Sequence[str], *,
                   record: str = TRAINING_RECORD) -> None:
  """Refuses a workdir whose trained models come from other training fields; records them.

  Args:
    workdir: the experiment's workdir.
    config: the whole config as JSON (`json.loads(config.to_json())`).
    fields: dotted paths of the fields that define the trained models ("seed", "train",
      "data.size").
    record: the record's path relative to `workdir`. A workdir written before training and
      evaluation were recorded apart has only `WORKDIR/config.json` (no `train_config.json`);
      its training fields are compared then.

  Raises:
    ValueError: the recorded training fields differ (naming them); nothing is written.
  """
  workdir = pathlib.Path(workdir)
  legacy = workdir / EVALUATION_RECORD
  hint = ("they are kept, not mixed with another config: change only evaluation fields, or "
          "use another --workdir")
  if (not (workdir / record).exists() and not (workdir / TRAINING_RECORD).exists()
      and legacy.exists()):
    changed = runner.config_difference(json.loads(legacy.read_text()), config, fields=fields)
    if changed:
      raise ValueError(f"{workdir} holds trained models of a different config (fields "
                       f"{changed} differ); {hint}")
  runner.record_config(workdir / record, config, fields=fields, what="trained models",
                       hint=hint)


def evaluation_folder(workdir, config: Mapping[str, Any], *, default=None,
                      ignore: Sequence[str] = ()) -> pathlib.Path:
  """The folder of this config's evaluation outputs, with the config recorded in it.

  `default` (WORKDIR unless given) when it records no config or this one (up to the fields in
  `ignore`, such as `figures`); otherwise `WORKDIR/eval_<hash>`, the hash (SHA-256, 10 hex
  digits) of this config without the `ignore` fields, so a rerun of the same config resumes
  there. Call `check_training` first: the training fields then agree, and only evaluation
  fields can differ.

  Raises:
    ValueError: (only on a hash collision) the folder records another config.
  """
  workdir = pathlib.Path(workdir)
  folder = workdir if default is None else pathlib.Path(default)
  previous = folder / EVALUATION_RECORD
  if previous.exists():
    changed = runner.config_difference(json.loads(previous.read_text()), config, ignore=ignore)
    if changed:
      kept = {k: v for k, v in sorted(config.items()) if k not in ignore}
      digest = hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode())
      folder = workdir / f"eval_{digest.hexdigest()[:10]}"
      print(f"{previous} records other evaluation fields ({', '.join(changed)}); the outputs "
            f"of this config go to {folder} (the trained models are reused)", flush=True)
  runner.record_config(folder / EVALUATION_RECORD, config, ignore=ignore, what="results")
  return folder
