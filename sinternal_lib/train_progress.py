"""One progress bar per training run, in place of transformers' per-step log dicts.

With `disable_tqdm=True` transformers prints every log as a raw dict (PrinterCallback: 26 lines of
strings-for-numbers in one notebook cell); with its own bar it adds an evaluation bar and more dicts.
`quiet_trainer` swaps both for one `tqdm.auto` bar over optimizer steps that shows the latest loss or
reward: a widget in JupyterLab, one final line in a papermill copy or a terminal. The step log itself
stays in the stage's files (loss.csv, rewards.csv) and `trainer.state.log_history`.
"""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm
from transformers import PrinterCallback, ProgressCallback, TrainerCallback

__all__ = ["StepBar", "quiet_trainer"]

SHOWN = ("loss", "reward", "learning_rate")  # the log keys worth a glance while training


class StepBar(TrainerCallback):
    """A tqdm bar over the run's optimizer steps, starting at the resumed step, with the last logged
    loss / reward as its postfix."""

    def __init__(self, desc: str = "training") -> None:
        self.desc = desc
        self.bar: Any = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", desc=self.desc)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if self.bar is not None and logs:
            shown = {k: f"{float(v):.3g}" for k, v in logs.items() if k in SHOWN and v is not None}
            if shown:
                self.bar.set_postfix(shown, refresh=False)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def quiet_trainer(trainer: Any, desc: str) -> Any:
    """Replace the trainer's printed logs and bars with one `StepBar`; returns the trainer."""
    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(StepBar(desc))
    return trainer
