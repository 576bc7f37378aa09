"""Telemetry: one Prometheus registry and /metrics server per process, the standard metric set, one-line logs.

Never imports jax.
"""

from shared.telemetry import logging, metrics
