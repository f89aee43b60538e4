"""Trainer callbacks of a fine-tune: progress and loss log, checkpoint marks, where training ends.

The held-out check's callback is `inbedder.heldout.curve_callback`; the step meter's, in
`inbedder.train_loop`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from inbedder.checkpoints import mark_checkpoint_complete
from inbedder.train_curves import loss_rows, write_log_csv

log = logging.getLogger("inbedder.train")


def progress_callbacks(out_dir: Path, first_step: list[int], timing: dict[str, float]) -> list[Any]:
    """A tqdm bar with loss and ETA, train_log.csv on every log, step timing; checkpoints marked complete."""
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    class ProgressAndLog(TrainerCallback):
        """Progress bar with loss, the CSV log rewritten from the Trainer's history, step timing."""

        bar = None

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                desc="training",
                unit="step",
                dynamic_ncols=True,
            )
            timing["start_step"] = state.global_step

        def on_step_begin(self, args, state, control, **kwargs):
            timing.setdefault("t0", time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            timing["t1"] = time.perf_counter()
            timing["end_step"] = state.global_step
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.n)

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "loss" in logs:
                if not first_step:
                    first_step.append(state.global_step)
                if self.bar is not None:
                    self.bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs.get('learning_rate', 0):.2e}")
                write_log_csv(out_dir / "train_log.csv", loss_rows(state.log_history))

        def on_train_end(self, args, state, control, **kwargs):
            if self.bar is not None:
                self.bar.close()

    class MarkCheckpoints(TrainerCallback):
        """Confirms each checkpoint once Trainer has written all of it (on_save runs after the save)."""

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if path.is_dir():
                mark_checkpoint_complete(path)
                log.info("checkpoint %s complete", path)

    return [ProgressAndLog(), MarkCheckpoints()]


def stop_at(step: int) -> Any:
    """Trainer callback: end training after optimizer step `step` (config `train.steps_of`)."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= step:
                control.should_training_stop = True

    return StopAt()


def no_checkpoint_at_the_end() -> Any:
    """Trainer callback: no checkpoint of the step training ends at (Trainer writes one by default). The
    final model is saved right after training and the checkpoints are deleted once the outputs are written,
    so it would be ~1.6 GB written (SmolLM2: weights and AdamW state) for a few seconds; a kill in between
    reruns from the checkpoint before. Added last: it sees every other callback's decision to stop."""
    from transformers import TrainerCallback

    class NoCheckpointAtTheEnd(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_training_stop:
                control.should_save = False

    return NoCheckpointAtTheEnd()
