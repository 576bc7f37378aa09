"""Code shared by the service processes (may import shared.scenes and jax, unlike shared.wire)."""
