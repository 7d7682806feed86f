"""xai_jax.explain."""
