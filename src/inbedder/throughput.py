"""Training throughput: tokens per second and the share of the machine's matmul peak a fine-tune reaches.

The peak is measured, not looked up: the best GFLOP/s of square matmuls in the dtype the work runs in
(bf16 under autocast, else fp32), in the same process and with the same threads. Two FLOP counts:
- `peak_fraction`: 6 x all parameters x real (non-padding) tokens / time, the usual training count
  (forward 2, backward 4 per parameter and token);
- `peak_fraction_executed`: only what runs, 6 x non-embedding parameters x real tokens + 6 x the LM
  head (vocabulary x hidden) x the positions it was applied to (every position with full logits, the
  answer positions when only those are computed). The embedding lookup does no matmul.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any


def matmul_peak_gflops(dtype: str = "bfloat16", seconds: float = 1.0) -> float:
    """Best GFLOP/s of square matmuls (1024, 2048) in `dtype` (`bfloat16`, `float32`) on this machine."""
    import torch

    from inbedder.loading import torch_dtype

    kind = torch_dtype(dtype)
    rng = torch.Generator().manual_seed(0)  # leaves the global RNG (training's) untouched
    best = 0.0
    for n in (1024, 2048):
        a = torch.randn(n, n, generator=rng).to(kind)
        b = torch.randn(n, n, generator=rng).to(kind)
        for _ in range(2):
            a @ b
        start = time.perf_counter()
        while time.perf_counter() - start < seconds / 2:
            one = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - one) / 1e9)
    return best


@dataclass(frozen=True)
class ParameterCount:
    """A causal LM's parameters: all (tied weights once), the LM head's, the untied input embedding's."""

    total: int
    lm_head: int
    embedding: int

    @property
    def body(self) -> int:
        """Parameters that do matmuls for every token: all but the input embedding and the LM head."""
        return self.total - self.embedding - self.lm_head


def count_parameters(model) -> ParameterCount:
    """Count a model's parameters; a tied LM head shares the input embedding's and is counted once."""
    total = sum(p.numel() for p in model.parameters())
    head = model.get_output_embeddings()
    embed = model.get_input_embeddings()
    head_n = head.weight.numel() if head is not None else 0
    tied = head is not None and embed is not None and head.weight is embed.weight
    embed_n = embed.weight.numel() if embed is not None and not tied else 0
    return ParameterCount(total=total, lm_head=head_n, embedding=embed_n)


def train_throughput(
    params: ParameterCount,
    *,
    real_tokens: int,
    padded_tokens: int,
    head_positions: int,
    seconds: float,
    peak_gflops: float,
    peak_dtype: str,
) -> dict[str, Any]:
    """Tokens/s and peak fractions of `seconds` of training steps (the keys of train_summary.json)."""
    if seconds <= 0 or real_tokens <= 0:
        return {"train_tokens": real_tokens, "train_compute_s": seconds}
    flops = 6 * params.total * real_tokens
    executed = 6 * params.body * real_tokens + 6 * params.lm_head * head_positions
    return {
        "train_tokens": int(real_tokens),
        "train_padded_tokens": int(padded_tokens),
        "padding_fraction": round(1 - real_tokens / padded_tokens, 4) if padded_tokens else None,
        "lm_head_positions": int(head_positions),
        "train_compute_s": round(seconds, 3),
        "tokens_per_s": round(real_tokens / seconds, 1),
        "train_gflops": round(flops / seconds / 1e9, 1),
        "matmul_peak_gflops": round(peak_gflops, 1),
        "matmul_peak_dtype": peak_dtype,
        "train_peak_fraction": round(flops / seconds / 1e9 / peak_gflops, 4),
        "train_peak_fraction_executed": round(executed / seconds / 1e9 / peak_gflops, 4),
        "flops_counted": "train_peak_fraction: 6 x all parameters x real tokens / time of the optimizer "
        "steps; train_peak_fraction_executed: 6 x non-embedding parameters x real tokens + 6 x LM head "
        "x the positions it ran on; both over the matmul peak measured in this process",
    }
