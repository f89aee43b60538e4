"""The encode cache, owned here: its files, its key, its validation, writing and reading.

`results/<run>/cache/<model>-<recipe>/<task>/` (docs/contracts.md), written by `write_cache`, each
file atomically and `meta.json` last (the completion marker):

- `prompts.jsonl`  `id, text, instruction`: every distinct (text, instruction), in first-seen order;
- `answers.jsonl`  `id, answer, token_ids` plus `tokens` (each generated token decoded on its own),
                   `instruction_tokens` (the instruction's tokens, decoded) and `answer_filtered` (the
                   answer without the tokens the filter drops); language models only;
- `hidden.safetensors`, float32 states, for each configured layer L (`@L` is the configured value,
  e.g. `first_gen@-1`):
    `first_gen@L [N,H]`   state at the last prompt token: it predicts the first answer token;
    `prompt_mean@L [N,H]` mean over the prompt tokens except the last (masked LMs: the prompt text
                          tokens, after `<s>` too under `method.masked_prompt_modes: authors`;
                          seq2seq: every encoder token);
    `all_mean@L [N,H]`    masked LMs under `method.masked_prompt_modes: authors`: mean over every
                          position (`<s>`, prompt, masks, `</s>`);
    `gen@L [N,G,H]`       states AT generated tokens 1..G, each predicting the next token; with
                          `first_gen` they are the generation steps (masked LMs: the T mask states);
                          causal LMs: G = max(T-1, 1), the state at the first generated token is
                          always there (the authors' stand-in step);
  and `gen_ids [N,T]` (token predicted by each step, -1 where no step ran), `gen_mask [N,T]` (steps
  up to and including the first EOS), `prompt_len [N]` (the prompt tokens `prompt_mean` averages,
  plus the last one for causal LMs);
  sentence encoders: `plain [N,H]` (the text) and `prefixed [N,H]` ("{instruction}: {text}");
  with a re-encoder: `re-encode [N,H]`, `re-encode+filter [N,H]` (and `re-encode-multi [N,H]`);
- `meta.json`: the model fingerprint, template, generation and compute settings, layers, the config
  `method` switches (with the task's filter instructions), the prompt list's sha256, and `cache_key`
  = sha256 of all of these (`Settings`, `key_fields` and `cache_key` are in `inbedder.cache_settings`
  and served from here); plus the size and sha256 of every file, the special token ids and the ids
  the authors' filter drops (`filter.authors_ids`).

The states are written as the model produces them: `RowStore` holds each array's rows in a file of a
temporary folder inside the cache folder (written in place, in prompt order, whatever order the length-sorted
batches come in, `WRITE_CHUNK_ROWS` rows at a time), and `write_cache` streams those files into
`hidden.safetensors`, so an encode job's memory does not grow with the number of prompts.
`load_cache` maps the arrays of `hidden.safetensors` read-only from the file (`np.memmap`): a reader
pages in only the arrays it uses.

A cache is reused only when `validate_cache` finds `meta.json` with the expected key and every file
intact; a changed prompt set or setting is a new key, a truncated or corrupt file is recomputed.
`hidden.safetensors` carries a copy of the meta in its header, so a cache whose `meta.json` alone
was removed (Snakemake deletes a job's declared output before rerunning it) is recovered by
`recover_meta` without running the model again, after its key and every checksum are checked.
`load_cache` opens a checked cache (`Cache`); `inbedder.encode` fills caches,
`inbedder.pooling` computes embeddings from them.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inbedder.cache_settings import (
    CACHE_FORMAT,
    KEY_NAMES,
    METHOD_KEYS,
    MULTI_SAMPLES,
    MULTI_TEMPERATURE,
    MULTI_TOP_P,
    OPTIONAL_KEY_NAMES,
    Settings,
    cache_key,
    distinct_prompts,
    key_fields,
    model_fingerprint,
    prompts_sha256,
)
from inbedder.files import atomic_path, read_jsonl, sha256_file, write_json, write_jsonl

# The key's names (`inbedder.cache_settings`) are part of the format this module owns: the other
# stages take them from here.
__all__ = [
    "ANSWERS", "CACHE_FORMAT", "HIDDEN", "KEY_NAMES", "META", "METHOD_KEYS", "MULTI_SAMPLES",
    "MULTI_TEMPERATURE", "MULTI_TOP_P", "OPTIONAL_KEY_NAMES", "PROMPTS", "WRITE_CHUNK_ROWS", "Cache", "CacheError", "RowStore",
    "Settings", "cache_key", "check_cache", "distinct_prompts", "key_fields", "load_cache",
    "model_fingerprint", "prompts_sha256", "recover_meta", "validate_cache", "write_cache",
    "write_safetensors",
]

log = logging.getLogger(__name__)

PROMPTS, ANSWERS, HIDDEN, META = "prompts.jsonl", "answers.jsonl", "hidden.safetensors", "meta.json"
# rows of one array an encode holds in memory before writing them to its RowStore file
WRITE_CHUNK_ROWS = 256


class CacheError(ValueError):
    """An encode cache is missing, stale or corrupt; the message names the file and the reason."""


# ----------------------------------------------------------------------------------------------
# validation


def _safetensors_header(path: Path) -> dict[str, Any]:
    """Parse a safetensors header and check the data section is complete; raise CacheError if not."""
    return _safetensors_layout(path)[1]


def _safetensors_layout(path: Path) -> tuple[int, dict[str, Any]]:
    """(offset of the data section, header) of a complete safetensors file; raise CacheError if not."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise CacheError(f"{path}: truncated ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise CacheError(f"{path}: truncated (header of {n} bytes, file of {size})")
        try:
            header = json.loads(fh.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise CacheError(f"{path}: corrupt header ({err})") from err
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise CacheError(f"{path}: truncated or padded (header says {8 + n + end} bytes, file has {size})")
    return 8 + n, header


def validate_cache(out_dir: str | os.PathLike, expected_key: str | None = None) -> str | None:
    """Why the cache in `out_dir` cannot be used (missing, stale, truncated, corrupt), or None if it is valid."""
    out = Path(out_dir)
    meta_path = out / META
    if not meta_path.exists():
        return f"{meta_path}: missing (no complete cache)"
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{meta_path}: not valid JSON ({err})"
    if expected_key is not None and meta.get("cache_key") != expected_key:
        return f"{meta_path}: stale (cache_key {str(meta.get('cache_key'))[:12]} != expected {expected_key[:12]})"
    if meta.get("format") != CACHE_FORMAT:
        return f"{meta_path}: format {meta.get('format')!r}, this code reads format {CACHE_FORMAT}"
    fields = {k: meta.get(k) for k in KEY_NAMES} | {k: meta[k] for k in OPTIONAL_KEY_NAMES if k in meta}
    if meta.get("cache_key") != cache_key(fields):
        return f"{meta_path}: cache_key does not match its own fields (edited or corrupt)"
    files = meta.get("files") or {}
    for name in (PROMPTS, HIDDEN):
        if name not in files:
            return f"{meta_path}: lists no {name}"
    for name, record in files.items():
        path = out / name
        if not path.exists():
            return f"{path}: missing"
        if path.stat().st_size != record["bytes"]:
            return f"{path}: {path.stat().st_size} bytes, meta.json recorded {record['bytes']} (truncated or replaced)"
        if name == HIDDEN:
            try:
                header = _safetensors_header(path)
            except CacheError as err:
                return str(err)
            stored = (header.get("__metadata__") or {}).get("cache_key")
            if stored != meta["cache_key"]:
                return f"{path}: written for cache_key {str(stored)[:12]}, meta.json has {meta['cache_key'][:12]}"
        if sha256_file(path) != record["sha256"]:
            return f"{path}: sha256 differs from meta.json (corrupt or replaced)"
    return None


def check_cache(out_dir: str | os.PathLike, expected_key: str | None = None) -> dict[str, Any]:
    """Return the cache's meta, or raise CacheError with the reason it cannot be used."""
    reason = validate_cache(out_dir, expected_key)
    if reason is not None:
        raise CacheError(reason)
    return json.loads((Path(out_dir) / META).read_text(encoding="utf-8"))


def recover_meta(out_dir: Path, key: str) -> bool:
    """Rewrite a removed meta.json from the copy in hidden.safetensors when key and checksums agree."""
    path = out_dir / HIDDEN
    if (out_dir / META).exists() or not path.exists():
        return False
    try:
        header = _safetensors_header(path)
        meta = json.loads((header.get("__metadata__") or {}).get("meta", "null"))
    except (CacheError, json.JSONDecodeError, TypeError):
        return False
    if not isinstance(meta, dict) or meta.get("cache_key") != key:
        return False
    for name, record in (meta.get("files") or {}).items():
        other = out_dir / name
        if not other.exists() or other.stat().st_size != record["bytes"] or sha256_file(other) != record["sha256"]:
            return False
    meta["files"][HIDDEN] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    write_json(out_dir / META, meta)
    if validate_cache(out_dir, key) is not None:
        (out_dir / META).unlink()
        return False
    log.info("%s: meta.json recovered from %s (same cache_key, files intact)", out_dir, HIDDEN)
    return True


# ----------------------------------------------------------------------------------------------
# writing and reading


# safetensors dtype names of the arrays a cache holds
_SAFETENSORS_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.float16): "F16",
                       np.dtype(np.int64): "I64", np.dtype(np.int32): "I32", np.dtype(np.int16): "I16",
                       np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8", np.dtype(np.bool_): "BOOL"}
_NUMPY_DTYPES = {v: k for k, v in _SAFETENSORS_DTYPES.items()}
_COPY_BYTES = 1 << 24  # bytes copied at a time into hidden.safetensors


class RowStore:
    """Arrays of `n` rows written to disk in chunks while an encode produces them.

    Each array is one file in `folder` (created empty, of its final size, when the first rows show its
    dtype and row shape); `put` takes rows in any order and writes them in place once `chunk_rows` rows
    of that array are pending, so memory holds at most a chunk per array. Rows never put read as zeros.
    `write_cache` streams the files into hidden.safetensors; `read` maps one back read-only.
    """

    def __init__(self, folder: str | os.PathLike, n: int, chunk_rows: int = WRITE_CHUNK_ROWS) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.n = int(n)
        self.chunk_rows = max(1, int(chunk_rows))
        self._specs: dict[str, tuple[np.dtype, tuple[int, ...], Path]] = {}
        self._pending: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._specs

    def names(self) -> list[str]:
        """The arrays, in the order they were first put."""
        return list(self._specs)

    def spec(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """(dtype, shape) of an array, rows first."""
        dtype, row_shape, _ = self._specs[name]
        return dtype, (self.n, *row_shape)

    def allocate(self, name: str, dtype: Any, row_shape: Sequence[int]) -> None:
        """Create array `name` (all zeros) unless it exists; raise ValueError if it exists with another spec."""
        dtype, row_shape = np.dtype(dtype), tuple(int(x) for x in row_shape)
        if name in self._specs:
            if self._specs[name][:2] != (dtype, row_shape):
                raise ValueError(f"{name}: rows of {dtype}{list(row_shape)}, the array holds "
                                 f"{self._specs[name][0]}{list(self._specs[name][1])}")
            return
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {dtype} cannot be stored in {HIDDEN}")
        path = self.folder / f"{len(self._specs):04d}.rows"
        with open(path, "wb") as fh:
            fh.truncate(self.n * int(np.prod(row_shape, dtype=np.int64)) * dtype.itemsize)  # sparse zeros
        self._specs[name] = (dtype, row_shape, path)
        self._pending[name] = []

    def put(self, name: str, rows: Sequence[int] | np.ndarray | slice, values: Any) -> None:
        """Set rows `rows` (prompt indices, any order; or a slice) of array `name` to `values` [len(rows), ...]."""
        values = np.asarray(values)
        if name not in self._specs:
            self.allocate(name, values.dtype, values.shape[1:])
        dtype, row_shape, _ = self._specs[name]
        index = (np.arange(self.n)[rows] if isinstance(rows, slice) else np.asarray(rows, dtype=np.int64)).reshape(-1)
        if values.shape != (len(index), *row_shape):
            raise ValueError(f"{name}: {len(index)} rows of {list(row_shape)} expected, got {list(values.shape)}")
        if len(index) and (index.min() < 0 or index.max() >= self.n):
            raise IndexError(f"{name}: row index outside [0, {self.n})")
        self._pending[name].append((index, np.array(values, dtype=dtype, order="C")))
        if sum(len(r) for r, _ in self._pending[name]) >= self.chunk_rows:
            self._write(name)

    def _write(self, name: str) -> None:
        pending, self._pending[name] = self._pending[name], []
        if not pending:
            return
        index = np.concatenate([r for r, _ in pending])
        values = np.concatenate([v for _, v in pending])
        order = np.argsort(index, kind="stable")  # a row put twice: the later values win
        index, values = index[order], values[order]
        row_bytes = values[0].nbytes if len(values) else 0
        breaks = np.flatnonzero(np.diff(index) != 1) + 1
        with open(self._specs[name][2], "r+b") as fh:
            for start, stop in zip([0, *breaks], [*breaks, len(index)], strict=True):
                fh.seek(int(index[start]) * row_bytes)
                fh.write(values[start:stop].data)

    def flush(self) -> None:
        """Write every pending row."""
        for name in self._specs:
            self._write(name)

    def read(self, name: str) -> np.ndarray:
        """Array `name`, mapped read-only from its file (pending rows written first)."""
        self._write(name)
        dtype, shape = self.spec(name)
        return _mapped(self._specs[name][2], dtype, shape, 0)

    def chunks(self, name: str) -> Iterator[bytes]:
        """The bytes of array `name`, in row order, a bounded chunk at a time."""
        self._write(name)
        with open(self._specs[name][2], "rb") as fh:
            while block := fh.read(_COPY_BYTES):
                yield block

    def remove(self) -> None:
        """Delete the folder and its files."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _mapped(path: Path, dtype: np.dtype, shape: Sequence[int], offset: int) -> np.ndarray:
    """A read-only array mapped from `path` at `offset` (an empty array needs no file)."""
    if int(np.prod(shape, dtype=np.int64)) == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


def _array_chunks(array: np.ndarray) -> Iterator[memoryview]:
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    for start in range(0, len(flat), _COPY_BYTES):
        yield flat[start : start + _COPY_BYTES].data


def write_safetensors(path: Path, tensors: Mapping[str, np.ndarray] | RowStore, metadata: Mapping[str, str]) -> None:
    """Write a safetensors file atomically, streaming the arrays (a RowStore's from its files): memory
    holds a bounded chunk, never the arrays. Arrays are laid out largest item first, then by name, so
    every array starts aligned; any safetensors reader reads the file."""
    if isinstance(tensors, RowStore):
        tensors.flush()
        specs = {name: tensors.spec(name) for name in tensors.names()}
        sources = {name: (lambda name=name: tensors.chunks(name)) for name in specs}
    else:
        specs = {name: (np.asarray(a).dtype, tuple(np.shape(a))) for name, a in tensors.items()}
        sources = {name: (lambda a=a: _array_chunks(np.asarray(a))) for name, a in tensors.items()}
    header: dict[str, Any] = {"__metadata__": dict(metadata)}
    offset = 0
    order = sorted(specs, key=lambda k: (-specs[k][0].itemsize, k))
    for name in order:
        dtype, shape = specs[name]
        if dtype not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{name}: dtype {dtype} cannot be stored in {HIDDEN}")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[dtype], "shape": [int(x) for x in shape],
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)))
        fh.write(raw)
        for name in order:
            written = 0
            for block in sources[name]():
                fh.write(block)
                written += len(block)
            expected = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]
            if written != expected:
                raise CacheError(f"{name}: {written} bytes written, {expected} expected")


def write_cache(out: Path, meta: dict[str, Any], prompts: Sequence[Mapping[str, str]],
                answers: list[dict[str, Any]] | None, tensors: Mapping[str, np.ndarray] | RowStore) -> dict[str, Any]:
    """Write prompts, answers, hidden states, then meta.json (last, with every file's size and sha256).

    `tensors`: the arrays, or the RowStore the encode wrote them to (streamed into hidden.safetensors).
    """
    out.mkdir(parents=True, exist_ok=True)
    (out / META).unlink(missing_ok=True)
    write_jsonl(out / PROMPTS, [{"id": i, "text": p["text"], "instruction": p["instruction"]}
                                for i, p in enumerate(prompts)])
    files = {PROMPTS: out / PROMPTS}
    if answers is not None:
        write_jsonl(out / ANSWERS, answers)
        files[ANSWERS] = out / ANSWERS
    elif (out / ANSWERS).exists():
        (out / ANSWERS).unlink()
    meta = dict(meta)
    meta["files"] = {name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)} for name, p in files.items()}
    write_safetensors(out / HIDDEN, tensors, {"cache_key": meta["cache_key"], "meta": json.dumps(meta, default=str)})
    meta["files"][HIDDEN] = {"bytes": (out / HIDDEN).stat().st_size, "sha256": sha256_file(out / HIDDEN)}
    write_json(out / META, meta)
    return meta


@dataclass(frozen=True)
class Cache:
    """An encode cache: meta, prompts, answers (language models) and its arrays, mapped read-only from
    hidden.safetensors (`np.memmap`: an array is read from disk when used, and only the parts used)."""

    path: Path
    meta: dict[str, Any]
    prompts: list[dict[str, Any]]
    answers: list[dict[str, Any]] | None
    tensors: dict[str, np.ndarray]

    @property
    def n(self) -> int:
        """Number of prompts."""
        return len(self.prompts)


def load_cache(cache_dir: str | os.PathLike, expected_key: str | None = None) -> Cache:
    """Open a cache after checking it (meta.json, key, sizes, checksums); raise CacheError if it is not valid.

    The arrays are memory-mapped read-only from hidden.safetensors, not read into memory.
    """
    path = Path(cache_dir)
    if path.name == META:
        path = path.parent
    meta = check_cache(path, expected_key)
    prompts = read_jsonl(path / PROMPTS)
    answers = read_jsonl(path / ANSWERS) if ANSWERS in meta["files"] else None
    start, header = _safetensors_layout(path / HIDDEN)
    tensors = {}
    for name, record in header.items():
        if name == "__metadata__":
            continue
        if record["dtype"] not in _NUMPY_DTYPES:
            raise CacheError(f"{path / HIDDEN}: {name} has dtype {record['dtype']}, not one a cache holds")
        tensors[name] = _mapped(path / HIDDEN, _NUMPY_DTYPES[record["dtype"]], record["shape"],
                                start + int(record["data_offsets"][0]))
    n = meta["prompts"]["n"]
    if len(prompts) != n or (answers is not None and len(answers) != n):
        raise ValueError(f"{path}: {len(prompts)} prompts / {None if answers is None else len(answers)} answers, "
                         f"meta.json says {n}")
    for name, array in tensors.items():
        if array.shape[0] != n:
            raise ValueError(f"{path}/{HIDDEN}: {name} has {array.shape[0]} rows, expected {n}")
    return Cache(path, meta, prompts, answers, tensors)
