"""xai_jax.metrics."""
