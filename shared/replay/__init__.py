"""Replay tables, host-side numpy: FIFO for on-policy data, uniform rings for off-policy data and expert tables."""

from shared.replay import tables
from shared.replay.tables import Fifo, Ring, Sampler, Table, make_tables
