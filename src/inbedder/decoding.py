"""One pass of a language model over tokenised prompts: the answer and the states of the configured layers.

Causal LMs: left padding, length-sorted batches (runs of equal length need no attention mask), greedy
decoding with the model's KV cache, the LM head on the last position only, and only the configured
layers' states kept (all-layer tuples live for one batch at most, and only when a non-final layer is
configured). Masked LMs: one forward pass with `max_new_tokens` masks after the prompt; the answer is
the argmax at each mask. Seq2seq: encoder states for the prompt modes, decoder states for the answer
modes. Layer L follows the `hidden_states` tuple of transformers: 0 = embeddings, -1 = final output.
The arrays a pass yields (`StepStates`) are what `inbedder.encode` writes into the encode cache.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inbedder.tokens import masked_prompt_ids, pad_left, pad_right, special_ids


def plan_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of at most `batch_size`, longest first; a batch ends where the length changes
    once it holds half of `batch_size` or more, so most batches have one length (no padding, no mask)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    min_fill = max(1, batch_size // 2)
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) >= batch_size
                        or (lengths[i] != lengths[current[0]] and len(current) >= min_fill)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def eos_ids(model, tokenizer) -> set[int]:
    """Every id that ends an answer: the tokenizer's EOS and the model's generation-config EOS ids."""
    found: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None),
                  getattr(model.config, "eos_token_id", None)):
        if isinstance(value, int):
            found.add(value)
        elif isinstance(value, (list, tuple)):
            found.update(int(v) for v in value)
    return found


def resolve_layers(layers: Sequence[int], num_layers: int, where: str) -> dict[int, int]:
    """Map configured layers to `hidden_states` indices (0 = embeddings, num_layers = final output)."""
    out = {}
    for layer in layers:
        index = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= index <= num_layers:
            raise ValueError(f"layers: {layer} is outside {where}'s range [-{num_layers + 1}, {num_layers}]")
        out[int(layer)] = index
    return out


# ----------------------------------------------------------------------------------------------
# running the models


@dataclass
class StepStates:
    """What one pass over the prompts yields, in prompt order (the arrays of hidden.safetensors; with a
    sink, the state arrays are mapped read-only from its files)."""

    tensors: dict[str, np.ndarray]
    gen_ids: np.ndarray   # [N, T] int64, -1 where no step ran
    gen_mask: np.ndarray  # [N, T] bool
    prompt_len: np.ndarray  # [N] int64
    layer_index: dict[str, int]
    num_layers: int
    first_gen_in_prompt: bool


class _Store:
    """Float32 state arrays per name, in prompt order: in memory, or written to a `sink` (an
    `inbedder.cache.RowStore`) as each batch finishes, so a pass holds one batch of states at a time."""

    def __init__(self, n: int, sink=None) -> None:
        self.n = n
        self.sink = sink
        self.arrays: dict[str, np.ndarray] = {}
        self.names: list[str] = []

    def put(self, name: str, rows: Sequence[int], values) -> None:
        values = values.float().cpu().numpy() if hasattr(values, "cpu") else np.asarray(values, np.float32)
        if name not in self.names:
            self.names.append(name)
        if self.sink is not None:
            self.sink.put(name, list(rows), values)
            return
        if name not in self.arrays:
            self.arrays[name] = np.zeros((self.n, *values.shape[1:]), dtype=np.float32)
        self.arrays[name][list(rows)] = values

    def ensure(self, name: str, row_shape: tuple[int, ...]) -> None:
        """Array `name` exists (zeros where no row was put)."""
        if name in self.names:
            return
        self.names.append(name)
        if self.sink is not None:
            self.sink.allocate(name, np.float32, row_shape)
        else:
            self.arrays[name] = np.zeros((self.n, *row_shape), dtype=np.float32)

    def result(self) -> dict[str, np.ndarray]:
        """The arrays (a sink's mapped read-only from its files)."""
        if self.sink is None:
            return self.arrays
        return {name: self.sink.read(name) for name in self.names}


def _pick(out, indices: Mapping[int, int], num_layers: int, hidden_attr: str = "hidden_states",
          last_attr: str = "last_hidden_state") -> dict[int, Any]:
    """States of the configured layers from a model output: the final one, or the hidden_states tuple."""
    states = getattr(out, hidden_attr, None)
    picked = {}
    for layer, index in indices.items():
        if index == num_layers and getattr(out, last_attr, None) is not None:
            picked[layer] = getattr(out, last_attr)
        else:
            if states is None:
                raise RuntimeError(f"layer {layer} needs output_hidden_states, the model returned none")
            picked[layer] = states[index]
    return picked


def _softcap(model, logits):
    import torch

    cap = getattr(model.config, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _record_step(nxt, done, pad_id, eos_t, batch_ids, batch_mask):
    """Book one greedy step: the token fed next (pad once finished), the ids kept (-1 once finished)."""
    import torch

    batch_mask.append(~done)
    token = torch.where(done, torch.full_like(nxt, pad_id), nxt)
    batch_ids.append(torch.where(done, torch.full_like(nxt, -1), nxt))
    return token, done | torch.isin(token, eos_t)


def _next_tokens(logits, temperature: float | None, generator, top_p: float | None = None):
    """Greedy without a temperature; else a draw at `temperature`, from the nucleus `top_p` when given."""
    import torch

    if not temperature:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p is not None and top_p < 1.0:
        ordered, order = probs.sort(dim=-1, descending=True)
        before = ordered.cumsum(-1) - ordered  # mass of the tokens ranked above each one
        ordered = torch.where(before < top_p, ordered, 0.0)  # the top token always stays
        probs = torch.zeros_like(probs).scatter(-1, order, ordered)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def run_causal(model, token_ids: Sequence[Sequence[int]], *, max_new_tokens: int, layers: Sequence[int],
               batch_size: int, eos: set[int], pad_id: int, temperature: float | None = None, top_p: float | None = None,
               generator=None, keep_states: bool = True, progress: Callable[[int], None] | None = None,
               sink=None) -> StepStates:
    """Greedy (or sampled) decoding with the KV cache, keeping only the configured layers' states.

    The state at the first generated token (`gen[:, 0]`) is always computed when states are kept, even
    when every answer of a batch ends at its first token or `max_new_tokens` is 1: the authors' rule
    falls back to it when no later step is kept (`inbedder.pooling`). With a `sink`
    (`inbedder.cache.RowStore`) each batch's states are written to it as the batch finishes.
    """
    import torch

    n_layers = model.config.get_text_config().num_hidden_layers
    indices = resolve_layers(layers, n_layers, "the model")
    need_all = keep_states and any(i != n_layers for i in indices.values())
    base = model.base_model
    head = model.get_output_embeddings()
    device = next(model.parameters()).device
    n, steps = len(token_ids), max_new_tokens
    passes = max(steps, 2) if keep_states else steps  # forward passes after the prompt's, plus one
    store = _Store(n, sink)
    gen_ids = np.full((n, steps), -1, dtype=np.int64)
    gen_mask = np.zeros((n, steps), dtype=bool)
    eos_t = torch.tensor(sorted(eos) or [-1], device=device)
    with torch.inference_mode():
        for rows in plan_batches([len(x) for x in token_ids], batch_size):
            ids, mask = pad_left([token_ids[r] for r in rows], pad_id, device)
            padded = not bool(mask.all())
            position = (mask.cumsum(-1) - 1).clamp(min=0)
            out = base(input_ids=ids, attention_mask=mask if padded else None, position_ids=position,
                       use_cache=steps > 1, output_hidden_states=need_all)
            last = out.last_hidden_state[:, -1]
            if keep_states:
                real = mask[:, :-1].bool().unsqueeze(-1)
                count = real.sum(1).float()
                for layer, h in _pick(out, indices, n_layers).items():
                    store.put(f"first_gen@{layer}", rows, h[:, -1])
                    body = torch.where(real, h[:, :-1].float(), 0.0).sum(1) / count.clamp(min=1)
                    # a one-token prompt has no "prompt except the last": its mean is that token's state
                    store.put(f"prompt_mean@{layer}", rows, torch.where(count > 0, body, h[:, -1].float()))
            token = _next_tokens(_softcap(model, head(last)), temperature, generator, top_p)
            done = torch.isin(token, eos_t)
            batch_ids, batch_mask = [token], [torch.ones_like(done)]
            cache = out.past_key_values
            gen: dict[str, np.ndarray] = {}  # this batch's states at the generated tokens
            for t in range(1, passes):
                if t > 1 and bool(done.all()):
                    break
                mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
                position = position[:, -1:] + 1
                out = base(input_ids=token[:, None], attention_mask=mask if padded else None,
                           position_ids=position, past_key_values=cache, use_cache=True,
                           output_hidden_states=need_all)
                cache = out.past_key_values
                if keep_states:
                    for layer, h in _pick(out, indices, n_layers).items():
                        name = f"gen@{layer}"
                        if name not in gen:
                            gen[name] = np.zeros((len(rows), passes - 1, h.shape[-1]), dtype=np.float32)
                        gen[name][:, t - 1] = h[:, 0].float().cpu().numpy()
                if t >= steps:  # the extra pass only computes the state at the first generated token
                    break
                nxt = _next_tokens(_softcap(model, head(out.last_hidden_state[:, -1])), temperature, generator,
                                   top_p)
                token, done = _record_step(nxt, done, pad_id, eos_t, batch_ids, batch_mask)
            for name, values in gen.items():
                store.put(name, rows, values)
            gen_ids[rows, : len(batch_ids)] = torch.stack(batch_ids, 1).cpu().numpy()
            gen_mask[rows, : len(batch_mask)] = torch.stack(batch_mask, 1).cpu().numpy()
            if progress:
                progress(len(rows))
    return StepStates(store.result(), gen_ids, gen_mask, np.array([len(x) for x in token_ids], dtype=np.int64),
                      {str(k): v for k, v in indices.items()}, n_layers, True)


def _mlm_head(model):
    """The masked-LM head module applied to final states (roberta `lm_head`, bert `cls`), or None."""
    for name in ("lm_head", "cls"):
        head = getattr(model, name, None)
        if head is not None and callable(head):
            return head
    return None


def run_masked(model, tokenizer, prompt_ids: Sequence[Sequence[int]], *, n_masks: int, layers: Sequence[int],
               batch_size: int, progress: Callable[[int], None] | None = None,
               specials_in_prompt_modes: bool = True, sink=None) -> StepStates:
    """One forward pass with `n_masks` masks after each prompt: the answer is the argmax at each mask.

    With `specials_in_prompt_modes` (config `method.masked_prompt_modes: authors`) `prompt_mean` also
    averages the leading special token (`<s>`) and `all_mean` holds the mean over every position
    (`<s>`, prompt, masks, `</s>`): the authors' avg-ppt and avg-all. `prompt_len` counts the
    positions `prompt_mean` averages.
    """
    import torch

    n_layers = model.config.num_hidden_layers
    indices = resolve_layers(layers, n_layers, "the model")
    head_ids, _ = special_ids(tokenizer)
    base, head = model.base_model, _mlm_head(model)
    device = next(model.parameters()).device
    n = len(prompt_ids)
    store = _Store(n, sink)
    gen_ids = np.zeros((n, n_masks), dtype=np.int64)
    need_all = head is None or any(i != n_layers for i in indices.values())
    with torch.inference_mode():
        for rows in plan_batches([len(x) for x in prompt_ids], batch_size):
            seqs = [masked_prompt_ids(tokenizer, prompt_ids[r], n_masks) for r in rows]
            ids, mask = pad_right(seqs, tokenizer.pad_token_id, device)
            start = len(head_ids)
            lens = torch.tensor([len(prompt_ids[r]) for r in rows], device=device)
            where = torch.arange(ids.shape[1], device=device)[None]
            first = 0 if specials_in_prompt_modes else start
            prompt_pos = (where >= first) & (where < start + lens[:, None])
            mask_pos = start + lens[:, None] + torch.arange(n_masks, device=device)[None]  # [B, n]
            if head is None:
                out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
                logits = out.logits.gather(1, mask_pos[..., None].expand(-1, -1, out.logits.shape[-1]))
                picked = {layer: out.hidden_states[i] for layer, i in indices.items()}
            else:
                out = base(input_ids=ids, attention_mask=mask, output_hidden_states=need_all)
                picked = _pick(out, indices, n_layers)
                final = out.last_hidden_state
                logits = head(final.gather(1, mask_pos[..., None].expand(-1, -1, final.shape[-1])))
            gen_ids[rows] = logits.argmax(-1).cpu().numpy()
            for layer, h in picked.items():
                at_masks = h.gather(1, mask_pos[..., None].expand(-1, -1, h.shape[-1]))
                store.put(f"first_gen@{layer}", rows, at_masks[:, 0])
                store.put(f"gen@{layer}", rows, at_masks[:, 1:])
                count = prompt_pos.sum(1, keepdim=True).clamp(min=1).float()
                store.put(f"prompt_mean@{layer}", rows,
                          torch.where(prompt_pos[..., None], h.float(), 0.0).sum(1) / count)
                if specials_in_prompt_modes:
                    real = mask.bool()[..., None]
                    store.put(f"all_mean@{layer}", rows,
                              torch.where(real, h.float(), 0.0).sum(1) / real.sum(1).clamp(min=1).float())
            if progress:
                progress(len(rows))
    extra = len(head_ids) if specials_in_prompt_modes else 0
    return StepStates(store.result(), gen_ids, np.ones((n, n_masks), dtype=bool),
                      np.array([len(x) + extra for x in prompt_ids], dtype=np.int64),
                      {str(k): v for k, v in indices.items()}, n_layers, False)


def run_seq2seq(model, token_ids: Sequence[Sequence[int]], *, max_new_tokens: int, layers: Sequence[int],
                batch_size: int, eos: set[int], pad_id: int, temperature: float | None = None, generator=None,
                keep_states: bool = True, progress: Callable[[int], None] | None = None,
                top_p: float | None = None, sink=None) -> StepStates:
    """Encoder states for the prompt modes, decoder states (greedy decoding, KV cache) for the answer modes."""
    import torch

    cfg = model.config
    n_enc = cfg.num_layers if hasattr(cfg, "num_layers") else cfg.encoder_layers
    n_dec = getattr(cfg, "num_decoder_layers", None) or getattr(cfg, "decoder_layers", None) or n_enc
    enc_idx = resolve_layers(layers, n_enc, "the encoder")
    dec_idx = resolve_layers(layers, n_dec, "the decoder")
    start_id = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else pad_id
    device = next(model.parameters()).device
    encoder = model.get_encoder()
    n, steps = len(token_ids), max_new_tokens
    store = _Store(n, sink)
    gen_ids = np.full((n, steps), -1, dtype=np.int64)
    gen_mask = np.zeros((n, steps), dtype=bool)
    eos_t = torch.tensor(sorted(eos) or [-1], device=device)
    need_enc = keep_states and any(i != n_enc for i in enc_idx.values())
    with torch.inference_mode():
        for rows in plan_batches([len(x) for x in token_ids], batch_size):
            ids, mask = pad_right([token_ids[r] for r in rows], pad_id, device)
            enc = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=need_enc)
            if keep_states:
                real = mask.bool().unsqueeze(-1)
                count = real.sum(1).float()
                for layer, h in _pick(enc, enc_idx, n_enc).items():
                    store.put(f"prompt_mean@{layer}", rows, torch.where(real, h.float(), 0.0).sum(1) / count)
            token = torch.full((len(rows),), start_id, dtype=torch.long, device=device)
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            cache, batch_ids, batch_mask = None, [], []
            gen: dict[str, np.ndarray] = {}  # this batch's decoder states at the generated tokens
            for t in range(steps):
                if bool(done.all()):
                    break
                out = model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=token[:, None],
                            past_key_values=cache, use_cache=True, output_hidden_states=True)
                cache = out.past_key_values
                if keep_states:
                    for layer, index in dec_idx.items():
                        h = out.decoder_hidden_states[index][:, 0]
                        if t == 0:
                            store.put(f"first_gen@{layer}", rows, h)
                        else:
                            name = f"gen@{layer}"
                            if name not in gen:
                                gen[name] = np.zeros((len(rows), steps - 1, h.shape[-1]), dtype=np.float32)
                            gen[name][:, t - 1] = h.float().cpu().numpy()
                nxt = _next_tokens(_softcap(model, out.logits[:, -1]), temperature, generator, top_p)
                token, done = _record_step(nxt, done, pad_id, eos_t, batch_ids, batch_mask)
            for name, values in gen.items():
                store.put(name, rows, values)
            gen_ids[rows, : len(batch_ids)] = torch.stack(batch_ids, 1).cpu().numpy()
            gen_mask[rows, : len(batch_mask)] = torch.stack(batch_mask, 1).cpu().numpy()
            if progress:
                progress(len(rows))
    if keep_states:
        tensors = store.result()
        for layer in dec_idx:  # no batch reached a second step: gen@ holds zeros
            store.ensure(f"gen@{layer}", (max(steps - 1, 0), tensors[f"first_gen@{layer}"].shape[-1]))
    return StepStates(store.result(), gen_ids, gen_mask, np.array([len(x) for x in token_ids], dtype=np.int64),
                      {str(k): v for k, v in dec_idx.items()}, n_dec, False)
