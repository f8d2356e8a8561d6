"""Progress bars: one per long step, a widget while a notebook runs and a single final line afterwards.

`bar(...)` takes tqdm's arguments. In a Jupyter kernel it shows an ipywidgets bar under a display id and, when
closed, replaces it by its final text line, so an executed copy (papermill, nbconvert), which keeps no
widget state, reads "sampling: 100% 24/24 [00:08 ...]" rather than the bar's first state; elsewhere it is
tqdm's text bar on stderr.

Training: with `disable_tqdm=True` transformers prints every log as a raw dict (PrinterCallback: 26 lines of
strings-for-numbers in one notebook cell); with its own bar it adds an evaluation bar and more dicts.
`quiet_trainer` swaps both for one `StepBar` over optimizer steps that shows the latest loss or reward.
The step log itself stays in the stage's files (loss.csv, rewards.csv) and `trainer.state.log_history`.
"""

from __future__ import annotations

import importlib.util
from typing import Any

from tqdm import tqdm as text_bar

__all__ = ["bar", "quiet_trainer"]


class _Line:
    """Shown as its text (text/plain): what a finished bar leaves in the notebook."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _in_notebook() -> bool:
    if importlib.util.find_spec("ipywidgets") is None or importlib.util.find_spec("IPython") is None:
        return False
    from IPython import get_ipython  # here: only asked when a bar starts

    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def bar(*args: Any, **kwargs: Any) -> Any:
    """A tqdm bar: a widget that ends as one text line in a notebook, tqdm's text bar elsewhere."""
    if not _in_notebook() or kwargs.get("disable"):
        return text_bar(*args, **kwargs)
    from IPython.display import display
    from tqdm.notebook import tqdm as widget_bar

    class _NotebookBar(widget_bar):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, display=False, **kw)
            self._handle = display(self.container, display_id=True)
            self.displayed = True  # tqdm's own display() must not show the widget a second time

        def close(self) -> None:
            super().close()
            if getattr(self, "_handle", None) is not None:
                self._handle.update(_Line(self.format_meter(**self.format_dict)))
                self._handle = None

    return _NotebookBar(*args, **kwargs)


SHOWN = ("loss", "reward", "learning_rate")  # the log keys worth a glance while training


def step_bar(desc: str = "training") -> Any:
    """A TrainerCallback: one `bar` over the run's optimizer steps, starting at the resumed step, with the last
    logged loss / reward as its postfix."""
    from transformers import TrainerCallback  # here: sampling imports this module, transformers takes seconds

    class StepBar(TrainerCallback):
        def __init__(self) -> None:
            self.bar: Any = None

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            if state.is_world_process_zero:
                self.bar = bar(total=state.max_steps, initial=state.global_step, unit="step", desc=desc)

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

    return StepBar()


def quiet_trainer(trainer: Any, desc: str) -> Any:
    """Replace the trainer's printed logs and bars with one `step_bar`; returns the trainer."""
    from transformers import PrinterCallback, ProgressCallback  # see step_bar

    trainer.remove_callback(PrinterCallback)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(step_bar(desc))
    return trainer
