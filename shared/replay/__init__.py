"""Pure replay buffers: FIFO for on-policy data, uniform for off-policy data and expert tables."""

from shared.replay import buffers
from shared.replay.buffers import BufferState, FifoQueue, UniformBuffer
