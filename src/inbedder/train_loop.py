"""The Trainer of the fine-tunes and what its optimizer steps computed.

`make_trainer` builds a transformers Trainer that
- groups batches by length (transformers' LengthGroupedSampler: random megabatches of 50 batches,
  each sorted by length), so a step pads its examples to a similar length, not to the longest of a
  random draw;
- for causal LMs, computes the LM head and the loss only at the positions that carry a label (the
  answer tokens and EOS; the prompt carries no loss), through the model's own `logits_to_keep`
  (a boolean mask: the hidden states of those positions alone meet the LM head, softcapping and
  scaling included). With a 262k-token vocabulary (Gemma) the full logits would cost more than the
  rest of the model. The loss is the one transformers computes (sum of token cross-entropies in
  float32 over the number of label tokens of the accumulated batch), up to summation order;
- counts, per micro-batch, the real (non-padding) tokens, the padded tokens and the positions the LM
  head ran on, while a callback times the optimizer steps (forward, backward, update; not checkpoint
  saves or logging). `StepMeter.summary` turns them into the throughput keys of train_summary.json
  (`inbedder.throughput`).

`TRAIN_LOOP` names these choices; it is part of a fine-tune's run key and of its rule's params, so a
change of them retrains and never resumes a checkpoint made under the other.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any

from inbedder.model_kinds import kind_of
from inbedder.throughput import count_parameters, matmul_peak_gflops, train_throughput
from inbedder.tokens import IGNORE_INDEX

TRAIN_LOOP = {"batches": "grouped by length", "causal_lm_head": "label positions only"}
log = logging.getLogger(__name__)


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


def label_positions(labels):
    """Boolean [B, T] mask of the positions whose next token is a label (causal LMs predict t+1 at t)."""
    import torch

    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return keep


def answer_only_loss(model, inputs: dict[str, Any], num_items_in_batch=None):
    """Causal LM loss with the LM head applied only where a label is: (loss, head positions) or None.

    None when the model does not take a boolean `logits_to_keep` mask (its forward lacks the
    argument, or the logits do not come back one row per kept position).
    """
    import torch
    import torch.nn.functional as F

    if "logits_to_keep" not in inspect.signature(model.forward).parameters:
        return None
    labels = inputs["labels"]
    keep = label_positions(labels)
    targets = labels[:, 1:][keep[:, :-1]]
    outputs = model(
        input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], logits_to_keep=keep
    )
    logits = outputs.logits
    if logits.ndim != 2 or logits.shape[0] != targets.numel():
        return None
    loss = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    if num_items_in_batch is None:
        loss = loss / max(1, targets.numel())
    else:
        items = num_items_in_batch
        loss = loss / (items.to(loss.device) if torch.is_tensor(items) else items)
    return loss, int(targets.numel())


def make_trainer(meter: StepMeter, kind: str, **trainer_kwargs: Any):
    """A transformers Trainer for a model of `kind`: label-position loss where the kind asks for it (causal
    LMs), metered steps."""
    from transformers import Trainer

    class InBedderTrainer(Trainer):
        """Trainer computing a causal LM's head only at label positions and counting every micro-batch."""

        answer_only = kind_of(kind).answer_only_loss

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if self.answer_only and not return_outputs:
                done = answer_only_loss(model, inputs, num_items_in_batch)
                if done is not None:
                    loss, positions = done
                    meter.count(inputs, head_positions=positions)
                    if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                        loss = loss * self.accelerator.num_processes  # as Trainer.compute_loss scales it
                    return loss
                log.warning("%s takes no boolean logits_to_keep: full logits", type(model).__name__)
                self.answer_only = False
            meter.count(inputs)
            return super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )

    callbacks = [*trainer_kwargs.pop("callbacks", []), meter_callback(meter)]
    return InBedderTrainer(callbacks=callbacks, **trainer_kwargs)
