"""The one topic/endpoint registry: every link of the stack, its pattern, who binds, its default port.

Singletons bind, scaled services connect. A link between two scaled services goes
through the `broker` service (the ZeroMQ load-balancing pattern, with credit flow on the scenes side):
scene_loader x N -> scenes_in -> broker -> scenes -> simulator x N, and simulator x N -> act -> broker ->
act_backend -> inference x K.
Patterns: "credit" = ROUTER (binds) / DEALER (connects) with credit flow control; "reqrep" = DEALER clients to a
ROUTER server; "pubsub" = PUB binds, SUB connects (newest version wins).

  endpoint("trajectories")                       -> "tcp://127.0.0.1:5553"
  endpoint("trajectories", host="*")             -> "tcp://*:5553"   (bind side)
  endpoint("act", transport="ipc", ipc_dir=d)    -> "ipc:///d/drivelab-act.sock"
Port offsets let two stacks share one host (tests, benchmarks).
"""

from __future__ import annotations

import dataclasses
import os


@dataclasses.dataclass(frozen=True)
class Link:
  """Attributes:
    name: link name used by `endpoint`.
    schemas: message schemas that travel on it.
    pattern: "credit", "reqrep" or "pubsub".
    binder: the service that binds (singleton or broker host).
    connectors: services that connect (may scale to N replicas).
    port: default TCP port.
    producer_binds: True where the binder sends the data (PUB, load-balancing broker backend).
  """

  name: str
  schemas: tuple[str, ...]
  pattern: str
  binder: str
  connectors: tuple[str, ...]
  port: int
  producer_binds: bool = False


LINKS: dict[str, Link] = {lk.name: lk for lk in (
    # Both ends of scenes and act scale, so a broker (the ZeroMQ load-balancing pattern) binds between them.
    Link("scenes_in", ("ScenarioBatch", "ExpertTrajectories"), "credit", "broker", ("scene_loader",), 5550),
    Link("scenes", ("ScenarioBatch",), "credit", "broker", ("simulator", "evaluator"), 5551, producer_binds=True),
    Link("act", ("ActRequest", "ActReply"), "reqrep", "broker", ("simulator", "evaluator"), 5552),
    Link("act_backend", ("ActRequest", "ActReply", "Heartbeat"), "reqrep", "broker", ("inference",), 5559,
         producer_binds=True),
    Link("trajectories", ("Trajectory",), "credit", "replay", ("simulator",), 5553),
    Link("expert", ("ExpertTrajectories",), "credit", "replay", ("scene_loader",), 5554),
    Link("replay_samples", ("ReplayBatch",), "credit", "learner", ("replay",), 5555),
    Link("params", ("Params",), "pubsub", "learner", ("inference", "simulator", "evaluator", "replay"), 5556,
         producer_binds=True),
    Link("eval", ("EvalReport",), "credit", "learner", ("evaluator",), 5558),
)}

METRICS_BASE_PORT = 9100  # each process serves /metrics on its own port; 0 picks a free one


def endpoint(name: str, host: str = "127.0.0.1", transport: str = "tcp", port_offset: int = 0,
             ipc_dir: str | None = None) -> str:
  """ZeroMQ endpoint of link `name`. host "*" gives the bind address; ipc needs `ipc_dir`."""
  link = LINKS.get(name)
  if link is None:
    raise KeyError(f"unknown link {name!r}; known: {sorted(LINKS)}")
  if transport == "tcp":
    return f"tcp://{host}:{link.port + port_offset}"
  if transport == "ipc":
    if ipc_dir is None:
      raise ValueError("ipc transport needs ipc_dir")
    suffix = f"-{port_offset}" if port_offset else ""
    return f"ipc://{os.path.join(ipc_dir, f'drivelab-{name}{suffix}.sock')}"
  if transport == "inproc":
    return f"inproc://drivelab-{name}-{port_offset}"
  raise ValueError(f"unknown transport {transport!r} (tcp, ipc, inproc)")
