"""A training progress bar over the whole run (steps of max_steps, steps/s, ETA), not per epoch.

Style-transfer runs are counted in steps; epochs of an arbitrary photo folder mean little. With
``trainer.max_time`` the bar's total is the step the time budget will end at, at the current rate,
so its ETA is the time left in the budget.
"""

from __future__ import annotations

import time
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer, TQDMProgressBar


def time_budget(trainer: pl.Trainer) -> Timer | None:
    """The Timer that enforces ``trainer.max_time``, if the run has a time budget."""
    return next((c for c in trainer.callbacks if isinstance(c, Timer) and c.time_remaining("train") is not None), None)


def expected_total(step: int, max_steps: int | None, remaining_s: float | None, steps_per_s: float | None) -> int | None:
    """The step at which the run ends: max_steps, or sooner when the time budget runs out first."""
    by_steps = max_steps if max_steps and max_steps > 0 else None
    if remaining_s is None or not steps_per_s:
        return by_steps
    by_time = step + int(remaining_s * steps_per_s)
    return min(by_steps, by_time) if by_steps else by_time


class StepProgressBar(TQDMProgressBar):
    def init_train_tqdm(self) -> Any:
        bar = super().init_train_tqdm()
        bar.unit = "step"
        return bar

    def on_train_start(self, trainer: pl.Trainer, *_: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=expected_total(trainer.global_step, trainer.max_steps, None, None))
        self.train_progress_bar.n = trainer.global_step  # a resumed run starts where it stopped
        self.train_progress_bar.set_description("Training")
        self._start = (time.perf_counter(), trainer.global_step)

    def on_train_epoch_start(self, trainer: pl.Trainer, *_: Any) -> None:
        pass  # one bar for the whole run

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        bar = self.train_progress_bar
        if bar is None or not self._should_update(trainer.global_step, bar.total):
            return
        timer = time_budget(trainer)
        if timer is not None:
            t0, step0 = self._start
            elapsed = time.perf_counter() - t0
            rate = (trainer.global_step - step0) / elapsed if elapsed > 0 else None
            total = expected_total(trainer.global_step, trainer.max_steps, timer.time_remaining("train"), rate)
            if total is not None and total != bar.total:
                bar.total = max(total, trainer.global_step)
        bar.n = trainer.global_step
        bar.set_postfix(self.get_metrics(trainer, pl_module) | {"epoch": trainer.current_epoch}, refresh=False)
        bar.refresh()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pass
