"""Closed-loop evaluation against a policy server (LIBERO / LIBERO-PRO). Nothing here imports jax: the simulator
clients run in their own venv (`make libero` -> .venv-libero)."""
