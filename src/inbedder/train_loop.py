"""The Trainer of the fine-tunes and what its optimizer steps computed.

`make_trainer` builds a transformers Trainer whose loss counts, per micro-batch, the real
(non-padding) tokens, the padded tokens and the positions the LM head ran on; a callback times the
optimizer steps (forward, backward, update; not checkpoint saves or logging). `StepMeter.summary`
turns them into the throughput keys of train_summary.json (`inbedder.throughput`).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from inbedder.throughput import count_parameters, matmul_peak_gflops, train_throughput


@dataclass
class StepMeter:
    """Tokens and seconds of this run's optimizer steps (a resumed run counts only its own steps)."""

    real_tokens: int = 0
    padded_tokens: int = 0
    head_positions: int = 0
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    steps: int = 0
    _started: tuple[float, float] | None = field(default=None, repr=False)

    def count(self, inputs: dict[str, Any], head_positions: int | None = None) -> None:
        """Count one micro-batch; the LM head ran on every real token unless told otherwise."""
        attention = inputs.get("attention_mask")
        ids = inputs["input_ids"]
        real = int(attention.sum()) if attention is not None else int(ids.numel())
        self.real_tokens += real
        self.padded_tokens += int(ids.numel())
        self.head_positions += real if head_positions is None else int(head_positions)

    def begin(self) -> None:
        """An optimizer step starts."""
        self._started = (time.perf_counter(), time.process_time())

    def end(self) -> None:
        """The optimizer step that began last has finished."""
        if self._started is not None:
            wall, cpu = self._started
            self.seconds += time.perf_counter() - wall
            self.cpu_seconds += time.process_time() - cpu
            self.steps += 1
            self._started = None

    def summary(self, model, peak_dtype: str) -> dict[str, Any]:
        """Throughput of the counted steps against the matmul peak measured now in `peak_dtype`."""
        import torch

        peak = matmul_peak_gflops(peak_dtype) if self.steps else float("nan")
        result = train_throughput(
            count_parameters(model),
            real_tokens=self.real_tokens,
            padded_tokens=self.padded_tokens,
            head_positions=self.head_positions,
            seconds=self.seconds,
            peak_gflops=peak,
            peak_dtype=peak_dtype,
        )
        result["train_cpu_s"] = round(self.cpu_seconds, 3)
        result["torch_threads"] = torch.get_num_threads()
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
        return result


def meter_callback(meter: StepMeter):
    """A Trainer callback timing each optimizer step into `meter`."""
    from transformers import TrainerCallback

    class MeterSteps(TrainerCallback):
        """Times the optimizer steps (on_step_begin .. on_step_end)."""

        def on_step_begin(self, args, state, control, **kwargs):
            meter.begin()

        def on_step_end(self, args, state, control, **kwargs):
            meter.end()

    return MeterSteps()


def make_trainer(meter: StepMeter, **trainer_kwargs: Any):
    """A transformers Trainer whose loss counts each micro-batch's tokens into `meter`."""
    from transformers import Trainer

    class MeteredTrainer(Trainer):
        """Trainer that counts the tokens of every micro-batch it computes a loss on."""

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            meter.count(inputs)
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    callbacks = [*trainer_kwargs.pop("callbacks", []), meter_callback(meter)]
    return MeteredTrainer(callbacks=callbacks, **trainer_kwargs)
