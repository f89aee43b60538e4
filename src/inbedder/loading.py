"""Loading a materialised or fine-tuned model folder for inference or training, as its kind says.

Language models load with their kind's Auto class (`inbedder.model_kinds`) and tokenizer; sentence
encoders as sentence-transformers folders. transformers and sentence-transformers are imported when a
model is loaded, not when this module is.
"""

from __future__ import annotations

import os
from pathlib import Path

from inbedder.model_kinds import kind_of


def torch_dtype(name: str):
    """The torch dtype for a config dtype name (`float32`, `bfloat16`)."""
    import torch

    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    if name not in dtypes:
        raise ValueError(f"dtype {name!r} is not one of {sorted(dtypes)}")
    return dtypes[name]


def load_lm(model_dir: str | os.PathLike, kind: str, *, device: str = "cpu", dtype: str = "float32"):
    """Load a causal/masked/seq2seq model folder with its LM head and tokenizer: (model, tokenizer)."""
    from transformers import AutoTokenizer

    path = Path(model_dir)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json; not a model folder (materialise or train it first)")
    model = kind_of(kind).auto_class().from_pretrained(path, dtype=torch_dtype(dtype)).to(device)
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token  # llama: masks are built from lengths, so EOS can pad
    model.eval()
    return model, tokenizer


def load_model(model_dir: str | os.PathLike, kind: str, device: str, dtype: str,
               attention: str | None = None):
    """(model, tokenizer) of a language-model folder, ready for inference.

    `attention` picks transformers' attention implementation; by default the kind's choice for `device`
    (`ModelKind.attention`: "eager" for causal LMs on CPU), else the model's default (SDPA).
    """
    model, tokenizer = load_lm(model_dir, kind, device=device, dtype=dtype)
    attention = attention if attention is not None else kind_of(kind).attention(device)
    if attention is not None:
        model.set_attn_implementation(attention)
    return model, tokenizer


def sentence_model(model_dir: str | os.PathLike, device: str, dtype: str = "float32"):
    """A sentence-transformers folder loaded for inference in `dtype`."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device=device)
    return model if dtype == "float32" else model.to(torch_dtype(dtype))
