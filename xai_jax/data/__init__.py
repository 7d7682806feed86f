"""xai_jax.data."""
