"""xai_jax.models."""
