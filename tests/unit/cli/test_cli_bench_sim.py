"""bench sim's goal summary: the strict falling check and which rises exceed the timing rounds' spread."""

from services.cli import bench_sim


def _row(b, us, span, agents=64):
  return {"scenes": "real", "batch_size": b, "agents_requested": agents, "ms_per_step": us * b / 1e3,
          "us_per_agent_step": us, "us_per_agent_step_range": span}


def test_goals_separate_noise_from_real_rises():
  rows = [_row(1, 17.0, [16.5, 18.0]), _row(16, 14.5, [14.0, 15.0]), _row(64, 15.0, [14.8, 15.5]),
          _row(256, 20.0, [19.0, 21.0]), _row(1, 300.0, [290.0, 310.0], agents=1)]
  g = bench_sim._goals(rows)["real"]
  assert g["us_per_agent_step_by_batch"] == {"1": 17.0, "16": 14.5, "64": 15.0, "256": 20.0}
  assert g["per_agent_cost_falls_with_batch"] is False
  # 16 -> 64 rises inside overlapping ranges (noise); 64 -> 256 rises with disjoint ranges (a real rise)
  assert g["rises_beyond_timing_spread"] == ["64->256"]
  assert g["batch16_ms_per_step"] == 14.5 * 16 / 1e3


def test_goals_falling_costs():
  rows = [_row(1, 17.0, [16.5, 18.0]), _row(16, 14.5, [14.0, 15.0])]
  g = bench_sim._goals(rows)["real"]
  assert g["per_agent_cost_falls_with_batch"] is True and g["rises_beyond_timing_spread"] == []
