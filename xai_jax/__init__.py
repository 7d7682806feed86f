"""xai_jax: saliency maps for image classifiers in JAX/Flax, and the metrics that measure them.

Data flows one way: `data -> models -> explain -> metrics -> reports`; `experiments/`
composes them. Import the subpackages you need, e.g. `from xai_jax.data import cells`.
"""

__version__ = "0.1.0"
