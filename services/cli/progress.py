"""The rich progress bar of the fused trainer's commands (`drivelab train`, `drivelab bench learn`).

  with training_bar(total_steps, done_steps, show=True, status_fn=None) as progress:
    carry, steps = fused.run(iteration_fn, carry, total_steps, on_iteration, progress=progress)

The bar shows agent steps, steps/s, the training rollouts' goal / collision / off-road rates and `status_fn()`
(e.g. the latest held-out evaluation).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def training_bar(total_steps: int, done_steps: int = 0, show: bool = True,
                 status_fn: Callable[[], str] | None = None) -> Iterator[Callable[[int, dict, float], None]]:
  from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

  columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
             TextColumn("{task.fields[info]}"))
  with Progress(*columns, disable=not show, transient=False) as bar:
    task = bar.add_task("agent steps", total=int(total_steps), completed=int(done_steps), info="compiling...")

    def progress(steps: int, metrics: dict, wall: float) -> None:
      new_steps = steps - progress.start
      bar.update(task, completed=min(steps, total_steps), info=(
          f"{new_steps / max(wall, 1e-9):,.0f} steps/s  train goal {metrics['goal_rate']:.2f} "
          f"col {metrics['collision_rate']:.2f} off {metrics['offroad_rate']:.2f}"
          + (f"  {status_fn()}" if status_fn is not None else "")))

    progress.start = int(done_steps)
    yield progress


__all__ = ["training_bar"]
