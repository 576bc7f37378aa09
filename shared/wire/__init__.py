"""The wire: msgpack header + raw array frames, one schema module, one endpoint registry, ZeroMQ transport.

Never imports jax (services that only move bytes stay light).
"""

from shared.wire import arena, codec, flow, registry, schemas, transport
from shared.wire.arena import Arena
from shared.wire.codec import DecodeError, Limits, Message, decode, encode
