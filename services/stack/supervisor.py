"""The local supervisor behind `drivelab up`: the whole stack as local processes, no Docker.

It allocates a free block of ZeroMQ ports (DRIVELAB_PORT_OFFSET) and one /metrics port per process, starts the
binders first (learner, replay, broker) and then the scaled services, each as `python -m services.cli.main serve
NAME` with its settings in DRIVELAB_* env vars; prints each process's /metrics URL as it starts; restarts a process
that exits (counted in drivelab_restarts_total{component} on the supervisor's own /metrics); stops everything on
SIGINT/SIGTERM or after `duration_s`. `run_dir/stack.json` always lists the live processes (name, pid, metrics
port), and each process logs to run_dir/logs/NAME.log. Simulator replicas after the first start once it has
compiled (`stagger`), so a cold start compiles once and the others read JAX's persistent cache; after a successful
`warmup` (which fills that cache first) they all start at once. With `prometheus`, Debian's `prometheus` binary
scrapes every process with the config of services.stack.prometheus_config.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from services.common import runtime
from shared.telemetry import metrics as tm
from shared.wire import registry

log = logging.getLogger(__name__)
RESTART_BACKOFF_S = 1.0
STAGGER_TIMEOUT_S = 120.0
UNROLL_SERIES = 'drivelab_handler_seconds_count{handler="unroll"}'


@dataclasses.dataclass(frozen=True)
class StackConfig:
  """Attributes:
    simulators, inference, scene_loaders: replica counts.
    evaluator: whether to run the evaluator.
    mode: "fused" (policy inside the simulator's rollout) or "service" (actions from the inference service).
    duration_s: stop by itself after this many seconds (0: run until SIGINT/SIGTERM).
    scenes: "synthetic" or a scene folder.
    run_dir: logs, stack.json, checkpoints, eval reports, prometheus data.
    port_offset: ZeroMQ port offset (-1: find a free block).
    prometheus: also start a local Prometheus scraping every process.
    scrape_interval_s: Prometheus scrape interval.
    max_restarts: restarts per process before the supervisor gives up on it.
    extra_env: more env vars for every child (e.g. DRIVELAB_SCENE_MAX_OBJECTS).
    stagger: start simulator replicas after the first has compiled (one compile at a time on small machines);
      moot after a successful warm-up.
    warmup: before starting anything (and the duration clock), run `python -m services.stack.warmup` once so the
      simulator's compiles are in JAX's persistent cache.
    algo: the learner's algorithm, a registry name (one that samples replay's expert table, such as bc, also
      turns on the scene loaders' expert trajectories);
      "" = DRIVELAB_ALGO from the environment, else the services' default (ppo).
    net, preset: the policy network every process builds (shared.acting.policy_net); "" = DRIVELAB_NET /
      DRIVELAB_NET_PRESET from the environment, else the default (mlp, small).
  """

  simulators: int = 2
  inference: int = 1
  scene_loaders: int = 1
  evaluator: bool = True
  mode: str = "fused"
  duration_s: float = 0.0
  scenes: str = "synthetic"
  run_dir: str = "runs/latest"
  port_offset: int = -1
  prometheus: bool = False
  scrape_interval_s: float = 1.0
  max_restarts: int = 20
  extra_env: tuple[tuple[str, str], ...] = ()
  stagger: bool = True
  warmup: bool = False
  algo: str = ""
  net: str = ""
  preset: str = ""


@dataclasses.dataclass
class Child:
  """One supervised process. Attributes: name ("simulator-1"), service, metrics_port, proc, restarts, started_s."""

  name: str
  service: str
  metrics_port: int
  proc: subprocess.Popen | None = None
  restarts: int = 0
  started_s: float = 0.0
  given_up: bool = False


def scrape_metrics(port: int, timeout_s: float = 0.5) -> dict[str, float]:
  """{series with labels: value} of one local process's /metrics ({} when it is not serving yet)."""
  try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout_s) as r:
      text = r.read().decode()
  except OSError:
    return {}
  out = {}
  try:
    for family in text_string_to_metric_families(text):
      for sample in family.samples:  # keyed as exposed: name{label="value",...}, labels in their exposed order
        labels = ",".join(f'{k}="{v}"' for k, v in sample.labels.items())
        out[sample.name + (f"{{{labels}}}" if labels else "")] = float(sample.value)
  except ValueError:  # a torn or foreign page: what parsed so far
    pass
  return out


def _scrape_value(port: int, series: str) -> float:
  """One sample of a process's /metrics (0 when it is not serving yet)."""
  return scrape_metrics(port).get(series, 0.0)


def jax_cache_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "drivelab", "jax")


def free_ports(n: int) -> list[int]:
  """n distinct free ports: all n sockets stay bound until every port is read, so the kernel cannot hand out the
  same port twice (one port per call, closed in between, did: two children once shared a metrics port in CI)."""
  socks = [socket.socket() for _ in range(n)]
  try:
    for s in socks:
      s.bind(("127.0.0.1", 0))
    return [int(s.getsockname()[1]) for s in socks]
  finally:
    for s in socks:
      s.close()


def _port_free(port: int) -> bool:
  with socket.socket() as s:
    try:
      s.bind(("127.0.0.1", port))
      return True
    except OSError:
      return False


def find_port_offset(start: int = 1000, stop: int = 40000, step: int = 20) -> int:
  """An offset at which every link port of the stack is free (random start, so parallel stacks rarely race)."""
  ports = [runtime.link_port(link) for link in registry.LINKS]
  first = start + step * (os.getpid() % ((stop - start) // step))
  for k in range((stop - start) // step):
    offset = start + (first - start + k * step) % (stop - start)
    if all(_port_free(p + offset) for p in ports):
      return offset
  raise RuntimeError("no free block of ZeroMQ ports found")


def plan(cfg: StackConfig) -> list[Child]:
  """Binders first, then the scaled services."""
  names = [("learner", 1), ("replay", 1), ("broker", 1), ("inference", cfg.inference),
           ("simulator", cfg.simulators), ("scene_loader", cfg.scene_loaders), ("evaluator", int(cfg.evaluator))]
  slots = [(svc, i) for svc, n in names for i in range(n)]
  return [Child(f"{svc}-{i}", svc, port) for (svc, i), port in zip(slots, free_ports(len(slots)))]


@functools.lru_cache(maxsize=8)
def _replay_tables(algo: str) -> tuple[str, ...]:
  """The replay tables the registry's `algo` samples (imports its bundle, and so jax, once); none for an unknown
  name, which the learner then refuses with one line."""
  from shared.algos import registry

  try:
    return registry.get(algo).tables
  except ValueError:
    return ()


class Supervisor:
  """Starts, watches and stops the children of one local stack."""

  def __init__(self, cfg: StackConfig, out=sys.stdout):
    self.cfg, self.out = cfg, out
    self.port_offset = cfg.port_offset if cfg.port_offset >= 0 else find_port_offset()
    self.children = plan(cfg)
    self.stop = threading.Event()
    self.registry = tm.new_registry()
    self.metrics = tm.standard_metrics(self.registry)
    self.metrics_port = tm.serve(0, self.registry, addr="127.0.0.1")
    self.deferred: list[Child] = []
    self.started_s = time.monotonic()
    self.prometheus: subprocess.Popen | None = None
    self.prometheus_port = 0
    os.makedirs(os.path.join(cfg.run_dir, "logs"), exist_ok=True)

  def say(self, line: str) -> None:
    print(line, file=self.out, flush=True)

  def child_env(self, child: Child) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"DRIVELAB_METRICS_PORT": str(child.metrics_port), "DRIVELAB_PORT_OFFSET": str(self.port_offset),
                "DRIVELAB_SCENES": self.cfg.scenes, "DRIVELAB_RUN_DIR": self.cfg.run_dir,
                "DRIVELAB_SIMULATOR_MODE": self.cfg.mode, "DRIVELAB_BROKER_HOST": "127.0.0.1",
                "DRIVELAB_REPLAY_HOST": "127.0.0.1", "DRIVELAB_LEARNER_HOST": "127.0.0.1",
                "PROMETHEUS_DISABLE_CREATED_SERIES": "True", "PYTHONUNBUFFERED": "1",
                "DRIVELAB_PARENT_PID": str(os.getpid())})
    chosen = {"DRIVELAB_ALGO": self.cfg.algo, "DRIVELAB_NET": self.cfg.net, "DRIVELAB_NET_PRESET": self.cfg.preset}
    env.update({k: v for k, v in chosen.items() if v})  # every process must agree on these: one place sets them
    if "expert" in _replay_tables(env.get("DRIVELAB_ALGO", "ppo")):  # the scene loaders replay the logged experts
      env["DRIVELAB_SCENE_LOADER_EMIT_EXPERT"] = "1"
    env.setdefault("JAX_PLATFORMS", "cpu")
    # Replicas, restarts and later runs compile the same functions: JAX's persistent cache makes that free.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", jax_cache_dir())
    # The cache key is the lowered program, whose op order follows set iteration somewhere in tracing: with
    # per-process string hashing every run missed the cache (measured); a fixed seed makes the key repeatable.
    env.setdefault("PYTHONHASHSEED", "0")
    # Many JAX processes share few cores: one compute thread each avoids oversubscription.
    env.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
    env.update(dict(self.cfg.extra_env))
    return env

  def start(self, child: Child) -> None:
    logf = open(os.path.join(self.cfg.run_dir, "logs", f"{child.name}.log"), "ab")
    child.proc = subprocess.Popen([sys.executable, "-m", "services.cli.main", "serve", child.service],
                                  env=self.child_env(child), stdout=logf, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # a Ctrl-C reaches the supervisor only; it stops them
    logf.close()
    child.started_s = time.monotonic()
    self.say(f"started {child.name} pid={child.proc.pid} metrics=http://127.0.0.1:{child.metrics_port}/metrics")
    self.write_status()

  def write_status(self) -> None:
    status = {"supervisor": {"pid": os.getpid(), "metrics_port": self.metrics_port},
              "prometheus_port": self.prometheus_port,
              "port_offset": self.port_offset,
              "children": {c.name: {"service": c.service, "pid": c.proc.pid if c.proc else None,
                                    "metrics_port": c.metrics_port, "restarts": c.restarts} for c in self.children}}
    path = os.path.join(self.cfg.run_dir, "stack.json")
    with open(path + ".tmp", "w") as f:
      json.dump(status, f, indent=1)
    os.replace(path + ".tmp", path)

  def targets(self) -> dict[str, list[str]]:
    jobs: dict[str, list[str]] = {"stack": [f"127.0.0.1:{self.metrics_port}"]}
    for c in self.children:
      jobs.setdefault(c.service, []).append(f"127.0.0.1:{c.metrics_port}")
    return jobs

  def watch_once(self) -> None:
    """Restarts every child that exited (after a short backoff), up to max_restarts each."""
    for c in self.children:
      if c.given_up or c.proc is None or c.proc.poll() is None:
        continue
      if time.monotonic() - c.started_s < RESTART_BACKOFF_S:
        continue
      if c.restarts >= self.cfg.max_restarts:
        c.given_up = True
        self.say(f"giving up on {c.name}: exited {c.restarts + 1} times (last code {c.proc.returncode})")
        continue
      c.restarts += 1
      self.metrics.restarts.labels(component=c.service).inc()
      self.say(f"restarting {c.name} (exit code {c.proc.returncode}, restart {c.restarts})")
      self.start(c)

  def start_deferred(self) -> None:
    """Starts the held-back simulator replicas once simulator-0 has run an unroll (its compiles are then in the
    persistent cache, so the others load them instead of compiling the same code side by side), or after
    STAGGER_TIMEOUT_S."""
    if not self.deferred:
      return
    first = next(c for c in self.children if c.name == "simulator-0")
    waited = time.monotonic() - self.started_s
    if waited < STAGGER_TIMEOUT_S and _scrape_value(first.metrics_port, UNROLL_SERIES) <= 0:
      return
    for c in self.deferred:
      self.start(c)
    self.deferred = []

  def run_warmup(self) -> int | None:
    """Compiles the simulator once in a child with the stack's env; its log is run_dir/logs/warmup.log. Returns the
    child's exit code (None when stopped first)."""
    child = next(c for c in self.children if c.service == "simulator")
    self.say("warming up: compiling the simulator into JAX's persistent cache")
    t0 = time.monotonic()
    with open(os.path.join(self.cfg.run_dir, "logs", "warmup.log"), "ab") as logf:
      proc = subprocess.Popen([sys.executable, "-m", "services.stack.warmup"],
                              env=self.child_env(child), stdout=logf, stderr=subprocess.STDOUT)
      while proc.poll() is None and not self.stop.wait(0.2):
        pass
      if proc.poll() is None:
        proc.terminate()
        proc.wait()
    self.say(f"warm-up done in {time.monotonic() - t0:.0f} s (exit code {proc.returncode})")
    return proc.returncode

  def run(self) -> int:
    self.say(f"supervisor pid={os.getpid()} metrics=http://127.0.0.1:{self.metrics_port}/metrics "
             f"port_offset={self.port_offset} run_dir={self.cfg.run_dir}")
    warmed = False
    if self.cfg.warmup:
      warmed = self.run_warmup() == 0
      if self.stop.is_set():
        return 0
    self.started_s = time.monotonic()
    # After a successful warm-up every replica loads the compiled programs from the cache: nothing to stagger.
    stagger = self.cfg.stagger and not warmed
    self.deferred = [c for c in self.children if stagger and c.service == "simulator" and not c.name.endswith("-0")]
    for c in self.children:
      if c not in self.deferred:
        self.start(c)
    if self.cfg.prometheus:
      from services.stack import local_prometheus

      self.prometheus, self.prometheus_port = local_prometheus.start(
          self.targets(), self.cfg.scrape_interval_s, self.cfg.run_dir, self.say)
      self.write_status()
    deadline = time.monotonic() + self.cfg.duration_s if self.cfg.duration_s > 0 else None
    try:
      while not self.stop.wait(0.2):
        if deadline is not None and time.monotonic() >= deadline:
          self.say(f"duration of {self.cfg.duration_s:.0f} s reached: stopping")
          break
        self.watch_once()
        self.start_deferred()
    finally:
      self.shutdown()
    return self.exit_code()

  def exit_code(self) -> int:
    """1 when the supervisor gave up on any child (it exited more than max_restarts times), else 0: a stack that
    ran on without one of its processes did not run as asked."""
    lost = [c.name for c in self.children if c.given_up]
    if lost:
      self.say(f"exit code 1: gave up on {', '.join(lost)}")
    return int(bool(lost))

  def shutdown(self, timeout_s: float = 60.0) -> None:
    """SIGTERM to every child (scaled services first, binders last), then SIGKILL whatever is left."""
    live = [c.proc for c in reversed(self.children) if c.proc is not None and c.proc.poll() is None]
    for p in live:
      p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    for p in live:
      try:
        p.wait(max(deadline - time.monotonic(), 0.1))
      except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    if self.prometheus is not None:
      self.prometheus.terminate()
      try:
        self.prometheus.wait(10)
      except subprocess.TimeoutExpired:
        self.prometheus.kill()
    codes = {c.name: c.proc.returncode for c in self.children if c.proc is not None}
    self.say("stopped: " + " ".join(f"{k}={v}" for k, v in codes.items()))

  def install_signal_handlers(self) -> None:
    def handle(signum, _frame):
      self.say(f"signal {signal.Signals(signum).name}: stopping")
      self.stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)
