"""Shared service loop helpers: common config, endpoints, signals, the /metrics server, heartbeat logs.

Every service process is `Runtime` + a service object with `run_once()` and `close()`:

  rt = Runtime("replay", common)            # registry + standard metrics, zmq context, producer id, epoch
  rt.install_signal_handlers()              # SIGTERM / SIGINT set rt.stop (main thread only)
  port = rt.serve_metrics()                 # logs event=metrics_url url=http://127.0.0.1:PORT/metrics
  svc = service.bootstrap(cfg, rt); rt.run(svc)

Endpoints: `endpoint(common, link, bind)` resolves a link of `shared.wire.registry` to the host of the service that
binds it (DRIVELAB_BROKER_HOST, ..._REPLAY_HOST, ..._LEARNER_HOST), shifted by `port_offset` so two stacks can
share a host. Env vars are read by each service's config.py, which hands `os.environ` to `common_from_env`; nothing here reads the environment itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import threading
import time
from typing import Mapping, Protocol, Sequence

import numpy as np
import prometheus_client
import zmq

from shared.telemetry import metrics as tm
from shared.wire import flow, registry, transport

log = logging.getLogger(__name__)

SERVICES = ("broker", "scene_loader", "simulator", "inference", "replay", "learner", "evaluator")


@dataclasses.dataclass(frozen=True)
class CommonConfig:
  """Settings every service shares (env var in brackets; CLI flags override).

  Attributes:
    metrics_port: /metrics port; 0 picks a free one [DRIVELAB_METRICS_PORT].
    broker_host, replay_host, learner_host: where the binding singletons run [DRIVELAB_<NAME>_HOST].
    port_offset: added to every link's registry port, so stacks can share a host [DRIVELAB_PORT_OFFSET].
    scenes: "synthetic" or a folder of scene files [DRIVELAB_SCENES].
    run_dir: where checkpoints and reports go [DRIVELAB_RUN_DIR].
    algo: the learner's algorithm, a name in shared.algos.registry (replay keeps the tables it declares)
      [DRIVELAB_ALGO].
    net, preset: the policy network every process builds (shared.acting.policy_net: net "mlp" or "perceiver",
      preset "tiny", "small", "base" or "large") [DRIVELAB_NET, DRIVELAB_NET_PRESET].
    params_seed: seed of the version-0 params, which every process computes identically [DRIVELAB_PARAMS_SEED].
    log_level: logging level name [DRIVELAB_LOG_LEVEL].
    curve_dir: folder of CURVE keys (transport.create_curve_keys layout); set, every link is authenticated and
      encrypted; empty, plain TCP [DRIVELAB_CURVE_DIR].
    parent_pid: stop when this process is no longer our parent (the supervisor died without stopping us); 0 = off
      [DRIVELAB_PARENT_PID, set by `drivelab up`].
  """

  metrics_port: int = 9100
  broker_host: str = "127.0.0.1"
  replay_host: str = "127.0.0.1"
  learner_host: str = "127.0.0.1"
  port_offset: int = 0
  scenes: str = "synthetic"
  run_dir: str = "runs/latest"
  algo: str = "ppo"
  net: str = "mlp"
  preset: str = "small"
  params_seed: int = 0
  log_level: str = "INFO"
  curve_dir: str = ""
  parent_pid: int = 0


_ENV = {"metrics_port": "DRIVELAB_METRICS_PORT", "broker_host": "DRIVELAB_BROKER_HOST",
        "replay_host": "DRIVELAB_REPLAY_HOST", "learner_host": "DRIVELAB_LEARNER_HOST",
        "port_offset": "DRIVELAB_PORT_OFFSET", "scenes": "DRIVELAB_SCENES", "run_dir": "DRIVELAB_RUN_DIR",
        "algo": "DRIVELAB_ALGO", "log_level": "DRIVELAB_LOG_LEVEL", "curve_dir": "DRIVELAB_CURVE_DIR",
        "parent_pid": "DRIVELAB_PARENT_PID", "net": "DRIVELAB_NET",
        "preset": "DRIVELAB_NET_PRESET", "params_seed": "DRIVELAB_PARAMS_SEED"}


def typed_from_env(cls: type, env: Mapping[str, str], names: Mapping[str, str]) -> dict:
  """{field: value} for each dataclass field of `cls` whose env var (names[field]) is set, cast to its type."""
  out = {}
  for f in dataclasses.fields(cls):
    key = names.get(f.name)
    if key and env.get(key, "") != "":
      typ = type(f.default)
      out[f.name] = (env[key].lower() in ("1", "true", "yes")) if typ is bool else typ(env[key])
  return out


def add_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
  """One `--field-name` flag per dataclass field (default None = keep the env/default value)."""
  for f in dataclasses.fields(cls):
    if f.name in skip:
      continue
    typ = type(f.default)
    flag = "--" + f.name.replace("_", "-")
    if typ is bool:
      parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=None, metavar="BOOL")
    else:
      parser.add_argument(flag, type=typ, default=None)


def merge(cls: type, env_values: dict, args: argparse.Namespace | None, **fixed):
  """cls(defaults <- env <- CLI flags <- fixed)."""
  values = dict(env_values)
  if args is not None:
    values.update({f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
                   if getattr(args, f.name, None) is not None})
  values.update(fixed)
  return cls(**values)


def check_control_mode(service: str, mode: str) -> None:
  """SystemExit (one line) unless `mode` is one of shared.sim.control.CONTROL_MODES."""
  from shared.sim import control

  if mode not in control.CONTROL_MODES:
    raise SystemExit(f"{service}: --control-mode must be one of {', '.join(control.CONTROL_MODES)}, got {mode!r}")


def service_parser(name: str, config_cls) -> argparse.ArgumentParser:
  """`drivelab serve NAME` flags: the common ones plus every field of the service's config dataclass."""
  p = argparse.ArgumentParser(prog=f"drivelab serve {name}")
  add_args(p, CommonConfig)
  add_args(p, config_cls)
  return p


def load_service_config(name: str, config_cls, env_names: Mapping[str, str], argv: Sequence[str] | None,
                        env: Mapping[str, str]):
  """(config, CommonConfig) from defaults < env vars (`env_names`: field -> variable) < CLI flags. The caller, a
  service's config.py, hands in the environment: only config.py files read it."""
  args = service_parser(name, config_cls).parse_args(argv)
  cfg = merge(config_cls, typed_from_env(config_cls, env, env_names), args)
  return cfg, common_from_env(env, args)


def common_from_env(env: Mapping[str, str], args: argparse.Namespace | None = None) -> CommonConfig:
  return merge(CommonConfig, typed_from_env(CommonConfig, env, _ENV), args)


def link_port(link: str, port_offset: int = 0) -> int:
  return registry.LINKS[link].port + port_offset


def endpoint(common: CommonConfig, link: str, bind: bool = False) -> str:
  """tcp endpoint of `link`: "tcp://*:PORT" to bind, "tcp://<binder host>:PORT" to connect (the host of the
  service that binds it, `shared.wire.registry`)."""
  host = "*" if bind else getattr(common, f"{registry.LINKS[link].binder}_host")
  return f"tcp://{host}:{link_port(link, common.port_offset)}"


class ParamsWatcher:
  """Drains a transport.ParamsSubscriber in a daemon thread and keeps only the newest message.

  A service busy in one long call (a JAX compile, an evaluation episode) would otherwise leave its SUB queue full
  for a minute; libzmq 4.3.5 can then abort in stream_engine_base restart_input (libzmq issue #3937, seen here on
  shutdown). The socket is used only by the watcher's thread, as ZeroMQ requires.
  """

  def __init__(self, subscriber, poll_s: float = 0.2):
    self.sub, self.poll_s = subscriber, poll_s
    self._newest = None
    self._lock = threading.Lock()
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, name="params-watcher", daemon=True)
    self._thread.start()

  def _run(self) -> None:
    try:
      while not self._stop.is_set():
        msg = self.sub.poll(self.poll_s)
        if msg is not None:
          with self._lock:
            self._newest = msg
    finally:
      self.sub.close()

  def poll(self, timeout_s: float = 0.0):
    """The newest Params message not returned before, or None (same contract as ParamsSubscriber.poll)."""
    deadline = time.monotonic() + timeout_s
    while True:
      with self._lock:
        msg, self._newest = self._newest, None
      if msg is not None or time.monotonic() >= deadline:
        return msg
      time.sleep(min(0.01, max(deadline - time.monotonic(), 0.0)))

  def close(self) -> None:
    self._stop.set()
    self._thread.join(5.0)


def take_params(watcher: ParamsWatcher, metrics) -> tuple[dict, int] | None:
  """The newest Params as numpy arrays and their version (also set on drivelab_params_version); None if none new."""
  msg = watcher.poll(0.0)
  if msg is None:
    return None
  version = int(msg.fields["params_version"])
  metrics.params_version.set(version)
  return {k: np.asarray(v) for k, v in msg.arrays.items()}, version


def credit_consumer(rt: "Runtime", link: str, window: int, bind: bool = False, curve=None) -> flow.CreditConsumer:
  """The consuming end of a credit-flow link (`shared.wire.flow`), bound or connected per the registry."""
  return flow.CreditConsumer(rt.ctx, endpoint(rt.common, link, bind=bind), bind=bind, window=window,
                             metrics=rt.metrics, curve=curve)


def watch_params(rt: "Runtime", curve=None) -> ParamsWatcher:
  """A ParamsWatcher on the learner's params PUB (where every connecting service gets its params)."""
  sub = transport.ParamsSubscriber(rt.ctx, endpoint(rt.common, "params"), metrics=rt.metrics, curve=curve)
  return ParamsWatcher(sub)


ERROR_BACKOFF_FIRST_S, ERROR_BACKOFF_MAX_S = 0.001, 0.1


class Service(Protocol):
  def run_once(self) -> None: ...

  def close(self) -> None: ...


class Runtime:
  """Per-process plumbing a service needs: stop flag, zmq context, metrics registry, producer identity."""

  def __init__(self, name: str, common: CommonConfig, ctx: zmq.Context | None = None,
               heartbeat_interval_s: float = 10.0):
    self.name, self.common = name, common
    self.stop = threading.Event()
    self.ctx = ctx if ctx is not None else transport.new_context()
    self._own_ctx = ctx is None
    self.registry = tm.new_registry()
    self.metrics = tm.standard_metrics(self.registry)
    # Beyond the standard set: every message a service gives up on, by what it was (never silent).
    self.dropped = prometheus_client.Counter("drivelab_dropped", "Messages dropped and counted, by kind", ["what"],
                                             registry=self.registry)
    self.producer_id = f"{name}-{socket.gethostname()}-{os.getpid()}-{id(self) % 10000}"
    self.epoch = int(time.time() * 1000)  # a restarted process starts a new epoch: receivers reset its seq
    self.started_s = time.monotonic()
    self.heartbeat_interval_s = heartbeat_interval_s
    self._last_heartbeat = time.monotonic()
    self.metrics_port: int | None = None
    self.curve_keys = transport.curve_keys_from_files(common.curve_dir) if common.curve_dir else None
    self.sleep = time.sleep  # the error backoff's (a test may swap it)
    self._authenticator = None

  def curve(self, bind: bool):
    """CURVE keys for a socket (None without curve_dir); the first binding socket starts the authenticator."""
    if self.curve_keys is not None and bind and self._authenticator is None:
      self._authenticator = transport.start_authenticator(self.ctx, self.curve_keys)
    return self.curve_keys

  def install_signal_handlers(self) -> None:
    def handle(signum, _frame):
      log.info("event=signal signal=%s action=stopping", signal.Signals(signum).name)
      self.stop.set()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)

  def serve_metrics(self, port: int | None = None) -> int:
    self.metrics_port = tm.serve(self.common.metrics_port if port is None else port, self.registry)
    log.info("event=metrics_url url=http://127.0.0.1:%d/metrics", self.metrics_port)
    return self.metrics_port

  def heartbeat(self, **status) -> None:
    """Logs one status line every `heartbeat_interval_s` (cheap to call every loop iteration)."""
    now = time.monotonic()
    if now - self._last_heartbeat < self.heartbeat_interval_s:
      return
    self._last_heartbeat = now
    extra = " ".join(f"{k}={v}" for k, v in status.items())
    log.info("event=heartbeat uptime_s=%.0f %s", now - self.started_s, extra)

  def run(self, svc: Service) -> None:
    """Calls `svc.run_once()` until stopped. A handler error is counted (decode_errors{reason="handler_exception"}),
    logged in one line (at most one a second) and the loop goes on at once; only errors in a row back off (1 ms,
    doubling up to 100 ms), so a bad message costs no time but a handler that always fails does not spin."""
    log.info("event=start producer=%s epoch=%d", self.producer_id, self.epoch)
    errors_in_a_row, last_error_log = 0, -1.0
    try:
      while not self.stop.is_set():
        if self.common.parent_pid and os.getppid() != self.common.parent_pid:
          log.warning("event=orphaned parent_pid=%d action=stopping", self.common.parent_pid)
          break
        try:
          svc.run_once()
          errors_in_a_row = 0
        except (KeyboardInterrupt, SystemExit):
          raise
        except zmq.ContextTerminated:
          break
        except Exception as e:  # keep serving: one bad batch must not take the process down
          errors_in_a_row += 1
          self.metrics.decode_error("handler_exception")
          now = time.monotonic()
          if now - last_error_log >= 1.0:  # at most one line a second, however fast errors come
            log.error("event=handler_error error=%s detail=%r errors_in_a_row=%d", type(e).__name__,
                      " ".join(str(e).split())[:300], errors_in_a_row)
            log.debug("event=handler_error_traceback", exc_info=True)
            last_error_log = now
          if errors_in_a_row > 1:  # an isolated error costs no time; a loop that always fails backs off
            self.sleep(min(ERROR_BACKOFF_MAX_S, ERROR_BACKOFF_FIRST_S * 2 ** (errors_in_a_row - 2)))
    finally:
      svc.close()
      if self._authenticator is not None:
        self._authenticator.stop()
      self.metrics.up.set(0)
      log.info("event=stopped")
      if self._own_ctx:
        self.ctx.term()


def run_main(name: str, cfg, common: CommonConfig, bootstrap) -> int:
  """The body of every service's main(): logging, signals, metrics, bootstrap, loop."""
  from shared.telemetry import logging as tlog

  tlog.setup_logging(name, common.log_level)
  rt = Runtime(name, common)
  rt.install_signal_handlers()
  rt.serve_metrics()
  svc = bootstrap(cfg, rt)
  rt.run(svc)
  return 0
