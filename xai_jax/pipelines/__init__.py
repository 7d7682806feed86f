"""xai_jax.pipelines: one module per evaluation protocol, end to end, in a workdir.

Each pipeline exposes `run(config, workdir, *, progress=True)`: it checks the config
(`validate`), trains or loads the model, explains and scores (`xai_jax.runner`), writes the
tables, statistics, figures and `report.md` into `workdir` (resumable), and returns the tables.
The absl mains in the repository's `experiments/` and the notebooks in `colab/` call the same
function; the configs are the repository's `configs/<name>.py`.

* `cells`: Tjoa & Guan (arXiv:2009.02899) on the synthetic cells: base model and branches,
  five-band / ROC / IOU / pixel-removal metrics, statistics across methods.
* `localization`: Gattas (2020): IOU / IOU* against object masks, split by confidence.
* `pixel_removal`: DeepMaps (Grabska-Barwinska et al. 2021): AOPC, AFOC, n_MoRF / n_LeRF and
  their delta variants, win rates.
* `sanity_checks`: Adebayo et al. (NeurIPS 2018): model and data randomisation.
* `timing`: Gattas (2020) Fig. 4.2: seconds per 100 explanations per method and model, with
  Captum / lime / shap side by side when the caller passes them.
* `cells_gallery`: the Fig. 2-like grid of the synthetic cells and their ground truth.
* `port_weights`: torchvision weights to an orbax checkpoint (needs the optional torch extra).

Shared parts: `workdir` (trained models apart from evaluation outputs), `training_data`
(training shards from any source), `image_experiment` (what `localization` and `pixel_removal`
share).
"""

from xai_jax.pipelines import cells
from xai_jax.pipelines import cells_gallery
from xai_jax.pipelines import localization
from xai_jax.pipelines import pixel_removal
from xai_jax.pipelines import port_weights
from xai_jax.pipelines import sanity_checks
from xai_jax.pipelines import timing

__all__ = ["cells", "cells_gallery", "localization", "pixel_removal", "port_weights",
           "sanity_checks", "timing"]
