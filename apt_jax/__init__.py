"""apt_jax: APT (Action expert PreTraining) for π0-style VLA policies in JAX/Flax."""
