"""xai_jax.reports."""
