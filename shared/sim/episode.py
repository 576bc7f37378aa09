"""Episode metrics: a rollout's stacked per-step metrics and trajectories -> one record per agent.

Inputs for ONE scene (vmap for a batch), S simulated steps starting after `init_step` (the state after step s is
logged step t = init_step + 1 + s), O objects, T logged steps:
  metrics: StepMetrics with (S, O) fields (overlap, offroad, offroute, goal_reached, red_light_run,
    stop_line_violation; only these are read, so any struct carrying them works),
  objects: ObjectState with (S, O) fields (x, y, valid): where every object was after each step,
  evaluated: (O,) bool, the agents the episode is scored for,
  scenario: the log (objects (O, T)).
A step counts for an object only while it exists (`objects.valid`): replayed objects vanish where their log ends,
controlled ones stay valid. Definitions (papers 000 and 002):
  failure = collision or off-road or off-route at any step; crash (paper 000) = collision or off-road;
  episodic_reward = +1 if the goal is reached before any crash, -1 if a crash comes first (or on the same step),
    0 otherwise (what a terminating episode returns; done signals are off in evaluation);
  progress_ratio = distance driven along the logged path / logged path length: the position at the last step the
    log is valid is projected onto the logged polyline from init_step (its last segment extended, so driving
    further than the log in the same time counts);
    defined for moving agents whose logged path is at least `min_path_m` long;
  moving = logged speed above `moving_speed_mps` at some valid step in [init_step, T).
Failure attribution (what a closed-loop failure on logged scenes is made of; other objects replay their log and do
not react):
  collision_partner = the object overlapping the agent most deeply at its first collision step (-1 when none);
  collision_with_controlled = that partner is controlled too (a policy drove both);
  rear_ended_by_log = the partner follows its log, its centre is behind the agent's along the agent's heading and
    it is closing in along that heading (a replayed car ran into the agent from behind: the log does not brake for
    a car that drives slower than its own logged one);
  failed_after_goal = the agent failed only after reaching its goal (with no goal done signal, "drive-on").
`summarize` (host side, numpy) turns per-agent records into rates with numerators and denominators, split into
all / moving / parked agents.
"""

from __future__ import annotations

import dataclasses

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from shared.scenes.types import WOMD_INIT_STEP
from shared.sim import control, geometry

BOOL_METRICS = ("failure", "collision", "offroad", "offroute", "crash", "goal_reached", "red_light_run",
                "stop_line_violation")
# Attribution flags (see the module docstring): summarized when a record has them (older records do not).
ATTRIBUTION_METRICS = ("collision_with_controlled", "rear_ended_by_log", "failed_after_goal")
SPLITS = ("all", "moving", "parked")
STEP_FLAGS = ("overlap", "offroad", "offroute", "goal_reached", "red_light_run", "stop_line_violation")  # read


@dataclasses.dataclass(frozen=True)
class EpisodeConfig:
  """How per-step metrics become episode metrics.

  Attributes:
    init_step: logged step the rollout starts from (its first output is init_step + 1).
    moving_speed_mps: an agent is "moving" if its logged speed exceeds this at some step of the simulated window.
    min_path_m: shortest logged path for which a progress ratio is defined (moving agents only: a parked car's
      jitter adds up to path length that is not driving).
    projection_tie_m: distances to the logged path this close to the nearest count as ties (furthest one wins).
  """

  init_step: int = WOMD_INIT_STEP
  moving_speed_mps: float = control.MOVING_SPEED_MPS
  min_path_m: float = 1.0
  projection_tie_m: float = 0.05


@flax.struct.dataclass
class EpisodeMetrics:
  """Per-agent episode metrics, (O,) each (a batch adds leading axes).

  Attributes:
    evaluated: bool, the agent is scored.
    moving: bool, logged speed > moving_speed_mps at some step.
    failure, collision, offroad, offroute, crash, goal_reached, red_light_run, stop_line_violation: bool, at any step.
    offroad_steps: int32, steps spent off-road.
    first_crash_step, goal_step: int32 sim-step index of the first crash / goal (S when never, or not evaluated).
    episodic_reward: float32 in {-1, 0, 1}.
    progress_m: float32 arc length of the final position along the logged path.
    path_m: float32 logged path length from init_step.
    progress_ratio: float32 progress_m / path_m (0 where undefined).
    progress_valid: bool, moving and path_m >= min_path_m.
    ade_m: float32 mean distance to the logged position over steps where both exist.
    fde_m: float32 distance at the last such step.
    first_collision_step: int32 sim-step index of the first collision (S when never, or not evaluated).
    collision_partner: int32 object index of the first collision's partner (-1 when none).
    collision_with_controlled, rear_ended_by_log, failed_after_goal: bool, see the module docstring.
  """

  evaluated: jax.Array
  moving: jax.Array
  failure: jax.Array
  collision: jax.Array
  offroad: jax.Array
  offroute: jax.Array
  crash: jax.Array
  goal_reached: jax.Array
  red_light_run: jax.Array
  stop_line_violation: jax.Array
  offroad_steps: jax.Array
  first_crash_step: jax.Array
  goal_step: jax.Array
  episodic_reward: jax.Array
  progress_m: jax.Array
  path_m: jax.Array
  progress_ratio: jax.Array
  progress_valid: jax.Array
  ade_m: jax.Array
  fde_m: jax.Array
  first_collision_step: jax.Array
  collision_partner: jax.Array
  collision_with_controlled: jax.Array
  rear_ended_by_log: jax.Array
  failed_after_goal: jax.Array


def _first_step(flags):
  """(S, O) bool -> (O,) int32 index of the first True (S where none)."""
  S = flags.shape[0]
  steps = jnp.arange(S, dtype=jnp.int32)[:, None]
  return jnp.min(jnp.where(flags, steps, S), axis=0)


def _forward_fill(x, y, valid):
  """Logged points (O, N) with invalid entries replaced by the last valid one before them (the first valid one
  where none precedes), so a polyline through them skips gaps with zero-length segments."""
  n = jnp.arange(valid.shape[-1])
  last = jax.lax.cummax(jnp.where(valid, n, -1), axis=valid.ndim - 1)
  first = jnp.argmax(valid, axis=-1)[..., None]
  idx = jnp.where(last < 0, first, last)
  take = lambda a: jnp.take_along_axis(a, idx, axis=-1)
  return take(x), take(y)


def path_progress(px, py, qx, qy, tie_m: float = 0.05):
  """Arc length of point q (O,) projected on polyline p (O, N), and the polyline's length; the last segment of
  positive length is extended past its end so overshooting the log counts as progress. Segments within `tie_m`
  of the nearest distance count as ties, resolved toward the furthest arc length."""
  chex.assert_equal_shape([px, py])
  ax, ay, bx, by = px[:, :-1], py[:, :-1], px[:, 1:], py[:, 1:]
  dx, dy = bx - ax, by - ay
  seg = jnp.hypot(dx, dy)  # (O, N-1)
  start = jnp.cumsum(seg, axis=-1) - seg
  real = seg > 1e-6
  n = jnp.arange(seg.shape[-1])
  last_real = jnp.max(jnp.where(real, n, -1), axis=-1, keepdims=True)
  u = ((qx[:, None] - ax) * dx + (qy[:, None] - ay) * dy) / jnp.where(real, seg * seg, 1.0)
  u = jnp.clip(u, 0.0, jnp.where(n == last_real, jnp.inf, 1.0)) * real
  dist = jnp.hypot(ax + u * dx - qx[:, None], ay + u * dy - qy[:, None])
  # Logs jitter back and forth over the same stretch (stopping cars), so a point can lie on several segments:
  # among the (near-)nearest ones take the furthest along, which makes an exact replay's end score the full path.
  near = dist <= jnp.min(dist, axis=-1, keepdims=True) + tie_m
  arc = jnp.where(near, start + u * seg, -jnp.inf)
  return jnp.max(arc, axis=-1), jnp.sum(seg, axis=-1)


def _trajectory_metrics(objects, scenario, cfg: EpisodeConfig):
  """progress_m, path_m, ade_m, fde_m, moving: (O,) each."""
  o = scenario.objects
  S = objects.x.shape[0]
  t0 = cfg.init_step
  log_x, log_y, log_v = o.x[:, t0:], o.y[:, t0:], o.valid[:, t0:]  # (O, T - t0)
  steps = jnp.arange(S)
  # Steps of the log matching the rollout's outputs: t0 + 1 .. t0 + S.
  both = objects.valid.T & log_v[:, 1:S + 1]  # (O, S)
  err = jnp.hypot(objects.x.T - log_x[:, 1:S + 1], objects.y.T - log_y[:, 1:S + 1])
  nboth = jnp.sum(both, axis=-1)
  ade = jnp.sum(err * both, axis=-1) / jnp.maximum(nboth, 1)
  last_both = jnp.argmax(jnp.where(both, steps, -1), axis=-1)
  fde = jnp.take_along_axis(err, last_both[:, None], axis=-1)[:, 0] * (nboth > 0)
  # Progress compares like with like: where the agent is at the last step its log is valid (a car whose log ends
  # early, leaving the map, keeps driving in the simulation; that is not progress along the logged path).
  pick = lambda a: jnp.take_along_axis(a.T, last_both[:, None], axis=-1)[:, 0]
  fx, fy = _forward_fill(log_x, log_y, log_v)
  progress, path = path_progress(fx, fy, pick(objects.x), pick(objects.y), cfg.projection_tie_m)
  path = path * (nboth > 0)
  moving = control.moving_in_log(o, t0, cfg.moving_speed_mps)
  return progress, path, ade, fde, moving


def _first_collision(overlap, objects, scenario, controlled):
  """(first collision step, partner index or -1, partner controlled, partner behind the agent and closing in) (O,)
  each: every object's box at each agent's own first collision step, the partner being the deepest overlap (least
  SAT gap)."""
  S, O = overlap.shape
  first = _first_step(overlap)
  hit = first < S
  at = lambda a: a[jnp.minimum(first, S - 1)]  # (S, O) -> (O agents, O objects): the scene at each agent's step
  x, y, yaw, valid = at(objects.x), at(objects.y), at(objects.yaw), at(objects.valid)
  vx, vy = at(objects.vel_x), at(objects.vel_y)
  length, width = scenario.objects.length, scenario.objects.width
  idx = jnp.arange(O)

  def gaps(i):
    me = tuple(a[None] for a in (x[i, i], y[i, i], yaw[i, i], length[i], width[i]))
    g = geometry.sat_gap(me, (x[i], y[i], yaw[i], length, width))[0]
    return jnp.where(valid[i] & (idx != i), g, jnp.inf)

  g = jax.vmap(gaps)(idx)  # (O, O)
  partner = jnp.argmin(g, axis=1)
  along = lambda ax, ay: ax * jnp.cos(yaw[idx, idx]) + ay * jnp.sin(yaw[idx, idx])  # onto the agent's heading
  behind = along(x[idx, partner] - x[idx, idx], y[idx, partner] - y[idx, idx]) < 0.0
  closing = along(vx[idx, partner] - vx[idx, idx], vy[idx, partner] - vy[idx, idx]) > 0.0
  return first, jnp.where(hit, partner, -1), hit & controlled[partner], hit & behind & closing


def episode_metrics(metrics, objects, evaluated, scenario, cfg: EpisodeConfig = EpisodeConfig(),
                    controlled=None) -> EpisodeMetrics:
  """EpisodeMetrics of one scene's rollout; see the module docstring for inputs and definitions. `controlled`: (O,)
  bool, the objects a policy drives (default `evaluated`), for the collision attribution."""
  chex.assert_rank(objects.x, 2)
  chex.assert_equal_shape([objects.x, metrics.overlap, metrics.offroad, metrics.offroute, metrics.goal_reached])
  S = objects.x.shape[0]
  alive = objects.valid
  flag = lambda a: a & alive
  overlap, offroad, offroute = flag(metrics.overlap), flag(metrics.offroad), flag(metrics.offroute)
  crash_t = overlap | offroad
  first_crash = _first_step(crash_t)
  goal_step = _first_step(flag(metrics.goal_reached))
  reward = jnp.where(goal_step < first_crash, 1.0, jnp.where(first_crash < S, -1.0, 0.0))
  progress, path, ade, fde, moving = _trajectory_metrics(objects, scenario, cfg)
  controlled = evaluated.astype(bool) if controlled is None else jnp.asarray(controlled, bool)
  first_col, partner, with_ctrl, behind = _first_collision(overlap, objects, scenario, controlled)
  first_failure = _first_step(crash_t | offroute)
  valid_path = (path >= cfg.min_path_m) & moving
  ev = evaluated.astype(bool)
  any_ = lambda a: jnp.any(a, axis=0) & ev
  return EpisodeMetrics(
      evaluated=ev, moving=moving & ev, failure=any_(crash_t | offroute), collision=any_(overlap),
      offroad=any_(offroad), offroute=any_(offroute), crash=any_(crash_t), goal_reached=(goal_step < S) & ev,
      red_light_run=any_(flag(metrics.red_light_run)), stop_line_violation=any_(flag(metrics.stop_line_violation)),
      offroad_steps=jnp.sum(offroad, axis=0).astype(jnp.int32) * ev,
      first_crash_step=jnp.where(ev, first_crash, S).astype(jnp.int32),
      goal_step=jnp.where(ev, goal_step, S).astype(jnp.int32), episodic_reward=(reward * ev).astype(jnp.float32),
      progress_m=progress.astype(jnp.float32), path_m=path.astype(jnp.float32),
      progress_ratio=jnp.where(valid_path, progress / jnp.maximum(path, 1e-6), 0.0).astype(jnp.float32),
      progress_valid=valid_path & ev, ade_m=ade.astype(jnp.float32), fde_m=fde.astype(jnp.float32),
      first_collision_step=jnp.where(ev, first_col, S).astype(jnp.int32),
      collision_partner=jnp.where(ev, partner, -1).astype(jnp.int32),
      collision_with_controlled=with_ctrl & ev, rear_ended_by_log=behind & ~with_ctrl & ev,
      failed_after_goal=(goal_step < first_failure) & (first_failure < S) & ev)


# SUMMARY (host side)

def _rate(flags: np.ndarray, mask: np.ndarray) -> dict:
  k, n = int(np.sum(flags & mask)), int(np.sum(mask))
  return {"rate": (k / n) if n else None, "count": k, "total": n}


def wilson_interval(count: int, total: int, z: float = 1.96) -> tuple[float, float] | None:
  """Wilson score interval of a rate count / total (default 95%); None for total 0. Unlike the normal
  approximation it stays inside [0, 1] and is not zero-width at 0 or total failures (0/32 -> [0, 0.107])."""
  if total <= 0:
    return None
  p, z2 = count / total, z * z
  denom = 1.0 + z2 / total
  center = (p + z2 / (2 * total)) / denom
  half = z * np.sqrt(p * (1 - p) / total + z2 / (4 * total * total)) / denom
  return max(0.0, float(center - half)), min(1.0, float(center + half))


def _mean(values: np.ndarray, mask: np.ndarray) -> dict:
  n = int(np.sum(mask))
  return {"mean": float(np.sum(np.where(mask, values, 0.0)) / n) if n else None, "total": n}


def as_dict(per_agent) -> dict[str, np.ndarray]:
  """EpisodeMetrics (or a dict of its fields) -> flat numpy arrays by field name."""
  if not isinstance(per_agent, dict):
    per_agent = {f.name: getattr(per_agent, f.name) for f in dataclasses.fields(per_agent)}
  return {k: np.asarray(v).reshape(-1) for k, v in per_agent.items()}


def summarize(per_agent, mask=None) -> dict:
  """Rates with counts over the agents in `mask` (default: `evaluated`), for all / moving / parked agents.

  per_agent: EpisodeMetrics or a dict of its fields, any shape (flattened); mask broadcasts to it. Returns
  {split: {"agents": n, metric: {"rate", "count", "total"} for BOOL_METRICS (and the ATTRIBUTION_METRICS a record
  has), "progress_ratio": {"mean", "total", "pooled"}, "episodic_reward" / "ade_m" / "fde_m" / "offroad_steps":
  {"mean", "total"}}}.
  """
  shape = np.shape(per_agent["evaluated"] if isinstance(per_agent, dict) else per_agent.evaluated)
  d = as_dict(per_agent)
  base = d["evaluated"].astype(bool)
  if mask is not None:  # broadcast against the per-agent shape, e.g. (N, 1) selects scenes of (N, O) records
    base &= np.broadcast_to(np.asarray(mask, bool), shape).reshape(-1)
  moving = d["moving"].astype(bool)
  out = {}
  for split, m in (("all", base), ("moving", base & moving), ("parked", base & ~moving)):
    s = {"agents": int(np.sum(m))}
    for k in BOOL_METRICS + tuple(a for a in ATTRIBUTION_METRICS if a in d):
      s[k] = _rate(d[k].astype(bool), m)
    pv = m & d["progress_valid"].astype(bool)
    s["progress_ratio"] = _mean(d["progress_ratio"], pv)
    path = float(np.sum(np.where(pv, d["path_m"], 0.0)))
    s["progress_ratio"]["pooled"] = float(np.sum(np.where(pv, d["progress_m"], 0.0)) / path) if path > 0 else None
    for k in ("episodic_reward", "ade_m", "fde_m", "offroad_steps"):
      s[k] = _mean(d[k].astype(np.float64), m)
    out[split] = s
  return out


__all__ = ["EpisodeConfig", "EpisodeMetrics", "episode_metrics", "path_progress", "summarize", "as_dict",
           "BOOL_METRICS", "ATTRIBUTION_METRICS", "SPLITS"]
