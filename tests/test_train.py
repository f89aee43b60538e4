"""Fine-tuning: exact label masks per objective, a real SmolLM2 run, resume after a kill, bad input."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

import inbedder.train as train_module
from inbedder.answering import generate_answers
from inbedder.checkpoints import scan_checkpoints
from inbedder.config import load_config
from inbedder.files import read_jsonl, write_jsonl
from inbedder.heldout import CURVE, HeldoutCurve, add_point, curve_until, plateau, read_curve, write_curve
from inbedder.loading import load_lm
from inbedder.models import write_fingerprint
from inbedder.rule_params import train_params
from inbedder.text import format_prompt, remove_stopwords
from inbedder.throughput import count_parameters, train_throughput
from inbedder.train import train_model, training_arguments
from inbedder.train_curves import moving_average, plot_heldout, plot_loss
from inbedder.train_data import IGNORE_INDEX, Collator, Encoded, EncodedDataset, encode_example, read_rows
from inbedder.train_loop import TRAIN_LOOP, StepMeter, answer_only_loss, make_trainer
from inbedder.train_settings import RUN_KEYS, TrainJob, TrainSettings, job_from_params

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("INBEDDER_DATA_MIRROR", ROOT.parent / "shared" / "data"))
CONFIG = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
MODELS = CONFIG["models"]
# the tiny models' train block: a step of 4 examples at a time, no warm-up
TINY_TRAIN = {
    "learning_rate": 1e-3,
    "epochs": 1.0,
    "max_steps": 1,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "weight_decay": 0.0,
    "batch_size": 4,
    "grad_accum": 1,
    "max_length": 128,
    "save_steps": 100,
    "seed": 0,
}


# ---------------------------------------------------------------------------------------------- fixtures


def c3_rows(n: int, offset: int = 0) -> list[dict[str, str]]:
    """The n shortest C3 validation questions from `offset` on, answers with stopwords removed (QA recipe)."""
    rows = []
    for rec in read_jsonl(MIRROR / "c3" / "c3.validation.en.jsonl"):
        answer = remove_stopwords(rec["value_prefix"])
        if answer:
            rows.append({"instruction": rec["value"], "input": rec["key"], "output": answer})
    rows = rows[offset : offset + 200]
    return sorted(rows, key=lambda r: len(r["input"]))[:n]


@pytest.fixture(scope="module")
def smollm2_dir(smollm2) -> Path:
    return smollm2


@pytest.fixture(scope="module")
def bert_tokenizer_dir(minilm) -> Path:
    """A real WordPiece tokenizer with [CLS]/[SEP]/[MASK]/[PAD] (from the packaged MiniLM)."""
    return minilm


@pytest.fixture()
def data(tmp_path) -> dict[str, Path]:
    train, heldout = (
        tmp_path / "data" / "train" / "qa.jsonl",
        tmp_path / "data" / "train" / "qa.heldout.jsonl",
    )
    write_jsonl(train, c3_rows(8))
    write_jsonl(heldout, c3_rows(4, offset=600))
    return {"train": train, "heldout": heldout}


def tiny_model(kind: str, tokenizer_dir: Path, out: Path) -> Path:
    """A randomly initialised tiny model of `kind` built from a config, saved with a real tokenizer."""
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
        RobertaConfig,
        RobertaForMaskedLM,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    size = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}
    if kind == "causal":
        model = LlamaForCausalLM(
            LlamaConfig(
                **size,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                num_key_value_heads=2,
                eos_token_id=tok.eos_token_id,
                bos_token_id=tok.bos_token_id,
            )
        )
    elif kind == "masked":
        model = RobertaForMaskedLM(
            RobertaConfig(
                **size,
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=300,
                type_vocab_size=1,
            )
        )
    else:
        model = T5ForConditionalGeneration(
            T5Config(
                **size,
                d_model=32,
                d_kv=16,
                d_ff=64,
                num_layers=2,
                num_heads=2,
                eos_token_id=tok.sep_token_id,
                decoder_start_token_id=tok.pad_token_id,
            )
        )
    model.save_pretrained(out)
    tok.save_pretrained(out)
    write_fingerprint(out, f"tiny-{kind}", kind, {"test": "random init"})
    return out


def job(kind: str, **settings) -> TrainJob:
    return TrainJob(
        model=f"tiny-{kind}",
        recipe="inbedder",
        kind=kind,
        template="inbedder",
        dataset="c3_qa",
        settings=TrainSettings.from_config({**TINY_TRAIN, **settings}),
        device="cpu",
        dtype="float32",
        max_new_tokens=3,
        heldout_rows=None,
        train_rows=None,
        train_target="authors",
        train_answer_cut="authors",
    )


def workflow_job(model: str, recipe: str, config: dict, **where) -> TrainJob:
    """The job the train_model rule runs: the rule params of `config` over the paper profile's -> TrainJob."""
    paper = load_config(ROOT / "config.yaml")
    config = {**paper, "device": "cpu", "dtype": "float32", **config, **where}
    return job_from_params(train_params(model, recipe, config))


# ---------------------------------------------------------------------------------------------- label masks


def test_causal_labels_are_exactly_answer_and_eos(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    row = {
        "instruction": "What is the man doing?",
        "input": "Man: Can I book a table for two?",
        "output": "Making seat reservation",
    }
    # method.train_target: authors (the default): nothing between `### Response:` and the answer
    enc = encode_example(tok, "causal", "inbedder", row, 256)
    prompt = tok(format_prompt("inbedder", row["instruction"], row["input"])).input_ids
    answer = tok("Making seat reservation", add_special_tokens=False).input_ids
    assert enc.input_ids == prompt + answer + [2]
    assert enc.labels == [IGNORE_INDEX] * len(prompt) + answer + [2]
    assert tok.decode([t for t in enc.labels if t != IGNORE_INDEX]) == "Making seat reservation<|im_end|>"
    # space: one space before the answer, tokenised on its own
    spaced = encode_example(tok, "causal", "inbedder", row, 256, train_target="space")
    answer = tok(" Making seat reservation", add_special_tokens=False).input_ids
    assert spaced.input_ids == prompt + answer + [2]
    assert spaced.labels == [IGNORE_INDEX] * len(prompt) + answer + [2]

    # SmolLM2 pads with its EOS (id 2): padding must keep the EOS target and mask by length.
    short = encode_example(tok, "causal", "inbedder", {**row, "output": "Booking"}, 256)
    batch = Collator(pad_id=tok.pad_token_id)([short.__dict__, enc.__dict__])
    n = len(short.input_ids)
    assert batch["labels"][0, n - 1].item() == 2 and (batch["labels"][0, n:] == IGNORE_INDEX).all()
    assert batch["attention_mask"][0].tolist() == [1] * n + [0] * (len(enc.input_ids) - n)
    assert batch["input_ids"][0, n - 1].item() == 2  # the EOS token itself, attended


def test_long_inputs_are_cut_to_max_length(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    row = {"instruction": "What is it about?", "input": "word " * 500, "output": "words"}
    for cut in ("authors", "quarter"):
        enc = encode_example(tok, "causal", "inbedder", row, 64, train_target="space", train_answer_cut=cut)
        assert len(enc.input_ids) <= 64
        assert tok.decode(enc.input_ids).endswith(
            "### Instruction:\nWhat is it about?\n\n### Response: words<|im_end|>"
        )
    # the authors' cut: the input (longest) keeps 64 - 20 - 5 - 1 = 38 tokens
    enc = encode_example(tok, "causal", "inbedder", row, 64)
    assert tok.decode(enc.input_ids) == (
        "### Input:\n" + " ".join(["word"] * 38) + "\n\n### Instruction:\nWhat is it about?\n\n"
        "### Response:words<|im_end|>"
    )


def test_rows_without_input_use_the_no_input_prompt(smollm2_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    row = {"instruction": "Name a primary colour.", "input": "", "output": "Red"}
    enc = encode_example(tok, "causal", "alpaca", row, 64)
    assert tok.decode(enc.input_ids) == "### Instruction:\nName a primary colour.\n\n### Response:Red<|im_end|>"
    long_instruction = {"instruction": "Explain " * 200, "input": "", "output": "Because"}
    for cut in ("authors", "quarter"):
        enc = encode_example(tok, "causal", "alpaca", long_instruction, 48, train_answer_cut=cut)
        assert len(enc.input_ids) <= 48
        assert tok.decode(enc.input_ids).endswith("### Response:Because<|im_end|>")


def test_masked_labels_and_one_step(tmp_path, data, bert_tokenizer_dir):
    base = tiny_model("masked", bert_tokenizer_dir, tmp_path / "tiny-masked")
    _, tok = load_lm(base, "masked")
    row = read_rows(data["train"], "train")[0]
    enc = encode_example(tok, "masked", "inbedder", row, 128)
    prompt = tok(
        format_prompt("inbedder", row["instruction"], row["input"]), add_special_tokens=False
    ).input_ids
    answer = tok(" " + row["output"], add_special_tokens=False).input_ids
    cls, sep, mask = tok.cls_token_id, tok.sep_token_id, tok.mask_token_id
    assert enc.input_ids == [cls] + prompt + [mask] * len(answer) + [sep]  # every answer token masked at once
    assert enc.labels == [IGNORE_INDEX] * (1 + len(prompt)) + answer + [IGNORE_INDEX]

    summary = train_model(job("masked"), base, data["train"], data["heldout"], tmp_path / "out")
    assert summary["steps"] == 1 and summary["first_step_loss"] > 0
    assert summary["heldout_rows"] == 4
    model, tok = load_lm(tmp_path / "out", "masked")
    prompts = [
        format_prompt("inbedder", r["instruction"], r["input"]) for r in read_rows(data["heldout"], "h")
    ]
    answers = generate_answers(model, tok, "masked", prompts, max_new_tokens=3, progress=False)
    assert len(answers) == len(prompts) == 4
    assert all(len(tok(a, add_special_tokens=False).input_ids) <= 3 for a in answers)


def test_seq2seq_labels_and_one_step_bf16(tmp_path, data, bert_tokenizer_dir):
    base = tiny_model("seq2seq", bert_tokenizer_dir, tmp_path / "tiny-t5")
    _, tok = load_lm(base, "seq2seq")
    row = read_rows(data["train"], "train")[0]
    enc = encode_example(tok, "seq2seq", "inbedder", row, 128)
    assert enc.input_ids == tok(format_prompt("inbedder", row["instruction"], row["input"])).input_ids
    assert enc.labels == tok(row["output"], add_special_tokens=False).input_ids + [tok.sep_token_id]

    summary = train_model(
        replace(job("seq2seq"), dtype="bfloat16"), base, data["train"], data["heldout"], tmp_path / "out"
    )
    assert summary["steps"] == 1 and summary["bf16_autocast"] is True
    answers = [r["answer_after"] for r in read_jsonl(tmp_path / "out" / "heldout_answers.jsonl")]
    assert len(answers) == 4 and all(isinstance(a, str) for a in answers)


# ---------------------------------------------------------------------------------------------- real run


def test_smollm2_few_steps_loss_falls(tmp_path, smollm2_dir):
    rows = c3_rows(4)
    write_jsonl(tmp_path / "inbedder.jsonl", rows)
    write_jsonl(tmp_path / "inbedder.heldout.jsonl", rows)
    train = {**TINY_TRAIN, "learning_rate": 1e-4, "max_steps": 4}
    models = {"smollm2-135m": {**MODELS["smollm2-135m"], "train": train}}
    out = tmp_path / "out"
    the_job = workflow_job("smollm2-135m", "inbedder", {"models": models},
                           dtype="bfloat16")  # CPU autocast: ~1.9x faster than fp32 here
    tables = (tmp_path / "inbedder.jsonl", tmp_path / "inbedder.heldout.jsonl")
    summary = train_model(the_job, smollm2_dir, *tables, out)
    with open(out / "train_log.csv", newline="") as fh:
        log = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in log] == [1, 2, 3, 4]
    losses = [float(r["loss"]) for r in log]
    assert losses[-1] < 0.5 * losses[0], losses  # the same 4 examples each step: the loss must fall
    assert summary["steps"] == 4 and summary["last_loss"] < summary["first_loss"]
    assert summary["bf16_autocast"] is True and summary["dtype"] == "bfloat16"
    assert summary["method"] == {"train_target": "authors", "train_answer_cut": "authors"}
    assert summary["recipe_epochs"] is None and summary["answers_cut"] == 0
    assert summary["heldout_token_f1_after"] >= summary["heldout_token_f1_before"]
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    # heldout_every null: the curve holds the checks before and after, and its figure exists
    assert (out / "heldout_f1.png").read_bytes()[:4] == b"\x89PNG"
    assert [p["step"] for p in read_curve(out / CURVE)] == [0, 4]
    assert summary["heldout_curve"] == [
        {"step": 0, "f1": summary["heldout_token_f1_before"], "loss": summary["heldout_loss_before"]},
        {"step": 4, "f1": pytest.approx(summary["heldout_token_f1_after"], abs=1e-6),
         "loss": pytest.approx(summary["heldout_loss_after"], abs=1e-6)},
    ]
    # the held-out rows are the training rows here: their answer loss falls as the training loss does
    assert summary["heldout_loss_after"] < 0.5 * summary["heldout_loss_before"]
    assert summary["kept_step"] == 4 and summary["heldout_metric"] == "token_f1"  # config.yaml's, for QA
    assert summary["stopped_early"] is False and summary["stop_reason"] == "max_steps reached (4)"
    assert summary["plateau_step"] in (0, 4)
    assert not (out / "checkpoints").exists()
    for key in ("seconds_per_step", "heldout_token_f1_before", "settings", "dtype", "template"):
        assert summary[key] is not None
    model, tok = load_lm(out, "causal")
    assert model.config.model_type == "llama" and tok.eos_token_id == 2
    assert json.loads((out / "train_summary.json").read_text())["fingerprint"] == summary["fingerprint"]
    # throughput: every step saw the same 4 examples; 6 x parameters x real tokens over the step time
    lengths = [len(encode_example(tok, "causal", "inbedder", r, 128).input_ids) for r in rows]
    assert summary["train_tokens"] == 4 * sum(lengths)
    assert summary["train_padded_tokens"] == 4 * 4 * max(lengths)
    assert summary["tokens_per_s"] == pytest.approx(
        summary["train_tokens"] / summary["train_compute_s"], rel=0.01
    )
    assert summary["matmul_peak_dtype"] == "bfloat16" and summary["matmul_peak_gflops"] > 0
    assert 0 < summary["train_peak_fraction_executed"] <= summary["train_peak_fraction"] < 1.5
    # the LM head ran on the label positions only: each row's answer tokens and EOS, every step
    answers = [
        sum(x != IGNORE_INDEX for x in encode_example(tok, "causal", "inbedder", r, 128).labels) for r in rows
    ]
    assert summary["lm_head_positions"] == 4 * sum(answers)
    assert summary["loop"] == {"batches": "grouped by length", "lm_head": "label positions only"}


# The shape of the tiny causal LMs of the loss and throughput tests (a few thousand parameters).
TINY_CAUSAL_SHAPE = {
    "vocab_size": 97,
    "hidden_size": 16,
    "intermediate_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
}


def _tiny_causal(kind: str):
    """A randomly initialised causal LM of a few thousand parameters (Llama, or Gemma-3 with logit softcapping)."""
    from transformers import AutoModelForCausalLM, Gemma3TextConfig, LlamaConfig

    torch.manual_seed(0)
    shape = {
        **TINY_CAUSAL_SHAPE,
        "pad_token_id": 0,
    }
    if kind == "gemma":
        config = Gemma3TextConfig(**shape, head_dim=8, final_logit_softcapping=30.0, sliding_window=4)
    else:
        config = LlamaConfig(**shape)
    return AutoModelForCausalLM.from_config(config).float()


def _batch(lengths_and_answers, vocab: int = 97):
    """Right-padded causal examples: (prompt length, answer length) -> ids and labels as the collator builds them."""
    generator = torch.Generator().manual_seed(1)
    examples = []
    for prompt, answer in lengths_and_answers:
        ids = torch.randint(1, vocab, (prompt + answer,), generator=generator).tolist()
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * prompt + ids[prompt:]})
    return Collator(pad_id=0)(examples)


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_answer_only_loss_equals_the_full_logits_loss(kind):
    model = _tiny_causal(kind)
    inputs = _batch([(9, 3), (5, 1), (12, 4)])
    full = model(**inputs)
    done = answer_only_loss(model, inputs)
    assert done is not None
    loss, positions = done
    assert positions == 3 + 1 + 4  # the labels after position 0: every answer token (EOS included)
    assert torch.allclose(loss, full.loss, atol=1e-6), (loss, full.loss)
    grads_full = torch.autograd.grad(full.loss, list(model.parameters()))
    grads_answer = torch.autograd.grad(answer_only_loss(model, inputs)[0], list(model.parameters()))
    for a, b in zip(grads_answer, grads_full):
        assert torch.allclose(a, b, atol=1e-6)
    # accumulated batches: the sum over this micro-batch divided by the label tokens of all of them
    halved, _ = answer_only_loss(model, inputs, num_items_in_batch=torch.tensor(16))
    assert torch.allclose(halved, full.loss / 2, atol=1e-6)


def test_parameter_counts_and_peak_fractions():
    from transformers import AutoModelForCausalLM, LlamaConfig

    shape = dict(TINY_CAUSAL_SHAPE)
    for tied in (True, False):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**shape, tie_word_embeddings=tied))
        count = count_parameters(model)
        assert count.total == sum(p.numel() for p in model.parameters())
        assert count.lm_head == 97 * 16 and count.embedding == (0 if tied else 97 * 16)
        assert count.body == count.total - 97 * 16 * (1 if tied else 2)
    got = train_throughput(
        count,
        real_tokens=1000,
        padded_tokens=1250,
        head_positions=100,
        seconds=2.0,
        peak_gflops=1e-3,
        peak_dtype="bfloat16",
    )
    assert got["tokens_per_s"] == 500 and got["padding_fraction"] == 0.2
    assert got["train_peak_fraction"] == round(6 * count.total * 1000 / 2.0 / 1e9 / 1e-3, 4)
    executed = 6 * count.body * 1000 + 6 * count.lm_head * 100
    assert got["train_peak_fraction_executed"] == round(executed / 2.0 / 1e9 / 1e-3, 4)


def test_a_model_without_logits_to_keep_falls_back_to_full_logits(tmp_path, caplog):
    model = _tiny_causal("llama")

    class NoKeep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, input_ids=None, attention_mask=None, labels=None):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    inputs = _batch([(6, 2), (4, 3)])
    assert answer_only_loss(NoKeep(), inputs) is None


def test_batches_are_grouped_by_length(tmp_path):
    # 640 examples of 4..67 tokens in random order, batches of 8: grouped by length (sorted within
    # random megabatches of 20 batches here, 50 on C3) a batch pads to about its own examples' length;
    # drawn at random it pads to the longest of 8 random lengths.
    order = torch.randperm(640, generator=torch.Generator().manual_seed(0)).tolist()
    examples = [Encoded([5] * (4 + i % 64), [IGNORE_INDEX] * (3 + i % 64) + [5]) for i in order]
    settings = TrainSettings.from_config({**TINY_TRAIN, "batch_size": 8, "max_steps": 8})
    meter = StepMeter()
    padding = {}
    for strategy in ("random", "group_by_length"):
        args = training_arguments(settings, tmp_path / strategy, bf16=False, device="cpu")
        args.train_sampling_strategy = strategy
        trainer = make_trainer(
            meter,
            "causal",
            model=_tiny_causal("llama"),
            args=args,
            train_dataset=EncodedDataset(examples),
            data_collator=Collator(pad_id=0),
        )
        batches = list(trainer.get_train_dataloader())
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padding[strategy] = 1 - real / sum(b["input_ids"].numel() for b in batches)
    assert (
        training_arguments(settings, tmp_path, bf16=False, device="cpu").train_sampling_strategy
        == "group_by_length"
    )
    assert padding["group_by_length"] < 0.1 < padding["random"], padding


# ---------------------------------------------------------------------------------------------- resume


class Killed(RuntimeError):
    """Stands for a kill in the middle of training."""


def _kill_at(step: int):
    from transformers import TrainerCallback

    class KillAt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step:
                raise Killed(f"killed at step {step}")

    return KillAt()


def test_rerun_after_kill_resumes_from_last_checkpoint(tmp_path, data, smollm2_dir):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    out = tmp_path / "out"
    settings = {"max_steps": 5, "save_steps": 2, "batch_size": 2}
    with pytest.raises(Killed):
        train_model(
            job("causal", **settings),
            base,
            data["train"],
            data["heldout"],
            out,
            extra_callbacks=[_kill_at(3)],
        )
    assert scan_checkpoints(out / "checkpoints").complete.name == "checkpoint-2"
    assert not (out / "train_summary.json").exists()

    summary = train_model(job("causal", **settings), base, data["train"], data["heldout"], out)
    assert summary["resumed_from_step"] == 2
    assert summary["first_logged_step_this_run"] == 3  # continues at step 3, not from zero
    assert summary["steps"] == 5 and summary["steps_this_run"] == 3
    with open(out / "train_log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5]

    # The same run uninterrupted gives the same model: resuming restores data order and RNG state.
    straight = train_model(job("causal", **settings), base, data["train"], data["heldout"], tmp_path / "o2")
    assert straight["resumed_from_step"] == 0
    assert straight["last_step_loss"] == pytest.approx(summary["last_step_loss"], rel=1e-4)


# A kill -9 at each moment of a checkpoint save, in a child process: Trainer writes the weights, the
# optimizer and scheduler, the RNG state and trainer_state.json one after the other, then our marker.
# Each patch writes part of the file it interrupts (what a kill mid-write leaves), then kills itself.
KILL_DURING_SAVE = r"""
import dataclasses, json, os, signal, sys
from pathlib import Path
import transformers
from transformers.trainer_callback import TrainerState
import inbedder.train as train

moment, job_json, base, train_path, heldout, out = sys.argv[1:]
target = "checkpoint-" + os.environ["KILL_AT_CHECKPOINT"]

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def cut(path):
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])

def patch(owner, name, after):
    original = getattr(owner, name)
    def patched(self, *args, **kwargs):
        where = str(args[0] if args else kwargs.get("output_dir", ""))
        if target not in where:
            return original(self, *args, **kwargs)
        if moment == "trainer_state":
            text = json.dumps(dataclasses.asdict(self), indent=2)
            Path(where).write_text(text[: len(text) // 2])
            die()
        original(self, *args, **kwargs)
        after(where)
        die()
    setattr(owner, name, patched)

if moment == "weights":
    patch(transformers.Trainer, "_save", lambda d: cut(Path(d) / "model.safetensors"))
elif moment == "optimizer":
    patch(transformers.Trainer, "_save_optimizer_and_scheduler", lambda d: (
        cut(Path(d) / "optimizer.pt"), (Path(d) / "scheduler.pt").unlink()))
elif moment == "trainer_state":
    patch(TrainerState, "save_to_json", lambda d: None)
elif moment == "marker":
    import inbedder.train_callbacks as callbacks
    original_mark = callbacks.mark_checkpoint_complete
    def mark(path):
        if target in str(path):
            die()
        original_mark(path)
    callbacks.mark_checkpoint_complete = mark

spec = json.loads(job_json)
job = train.TrainJob(**{**spec, "settings": train.TrainSettings(**spec["settings"])})
train.train_model(job, base, train_path, heldout, out)
sys.exit("the kill point was never reached")
"""


def _killed_during_save(moment: str, checkpoint: int, the_job: TrainJob, base: Path, data, out: Path) -> None:
    """Run a training in a child process that is killed -9 while checkpoint-<checkpoint> is saved."""
    import subprocess
    import sys
    from dataclasses import asdict

    env = {**os.environ, "KILL_AT_CHECKPOINT": str(checkpoint)}
    args = [
        moment,
        json.dumps(asdict(the_job)),
        str(base),
        str(data["train"]),
        str(data["heldout"]),
        str(out),
    ]
    result = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == -9, result.stderr[-3000:]


SAVE_MOMENTS = {
    "weights": "missing optimizer.pt, scheduler.pt, trainer_state.json",
    "optimizer": "missing scheduler.pt, trainer_state.json",
    "trainer_state": "every file present but not confirmed",
    "marker": "every file present but not confirmed",
}


KILLED_DURING_SAVE_JOB = {"max_steps": 6, "save_steps": 2, "batch_size": 2}


@pytest.fixture(scope="module")
def straight_run_loss(tmp_path_factory, smollm2_dir) -> float:
    """The last step's loss of the killed job run straight through (once for the moments below: the same
    seeded tiny model, data and settings in each)."""
    tmp = tmp_path_factory.mktemp("straight")
    rows = {"train": tmp / "qa.jsonl", "heldout": tmp / "qa.heldout.jsonl"}
    write_jsonl(rows["train"], c3_rows(8))
    write_jsonl(rows["heldout"], c3_rows(4, offset=600))
    base = tiny_model("causal", smollm2_dir, tmp / "tiny-causal")
    the_job = job("causal", **KILLED_DURING_SAVE_JOB)
    return train_model(the_job, base, rows["train"], rows["heldout"], tmp / "out")["last_step_loss"]


@pytest.mark.parametrize("moment", sorted(SAVE_MOMENTS))
def test_kill_9_while_a_checkpoint_is_saved_resumes_from_the_newest_complete_one(
    moment, tmp_path, data, smollm2_dir, caplog, straight_run_loss
):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    the_job = job("causal", **KILLED_DURING_SAVE_JOB)
    out = tmp_path / "out"
    _killed_during_save(moment, 4, the_job, base, data, out)
    assert not (out / "train_summary.json").exists()
    scan = scan_checkpoints(out / "checkpoints")
    assert scan.complete.name == "checkpoint-2"
    assert scan.rejected[0].startswith("checkpoint-4: no checkpoint_complete.json")
    assert SAVE_MOMENTS[moment] in scan.rejected[0]

    with caplog.at_level("INFO", logger="inbedder.train"):
        summary = train_model(the_job, base, data["train"], data["heldout"], out)
    assert "not resuming from checkpoint-4" in caplog.text
    assert re.search(r"resuming tiny-causal-inbedder from .*checkpoint-2$", caplog.text, flags=re.MULTILINE)
    assert summary["resumed_from_step"] == 2 and summary["fresh_start_reason"] is None
    assert summary["checkpoints_rejected"] == list(scan.rejected)
    assert summary["first_logged_step_this_run"] == 3 and summary["steps"] == 6
    with open(out / "train_log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]
    assert straight_run_loss == pytest.approx(summary["last_step_loss"], rel=1e-4)


def test_kill_9_during_the_first_checkpoint_starts_over_and_says_why(tmp_path, data, smollm2_dir, caplog):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    the_job = job("causal", max_steps=4, save_steps=2, batch_size=2)
    out = tmp_path / "out"
    _killed_during_save("optimizer", 2, the_job, base, data, out)
    with caplog.at_level("INFO", logger="inbedder.train"):
        summary = train_model(the_job, base, data["train"], data["heldout"], out)
    why = "no complete checkpoint (checkpoint-2: no checkpoint_complete.json (the save was cut short: missing"
    assert summary["resumed_from_step"] == 0 and summary["fresh_start_reason"].startswith(why)
    assert f"training tiny-causal-inbedder from step 0: {why}" in caplog.text


def test_changed_settings_start_over_and_name_the_changed_key(tmp_path, data, smollm2_dir):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    out = tmp_path / "out"
    with pytest.raises(Killed):
        train_model(
            job("causal", max_steps=3, save_steps=1, batch_size=2),
            base,
            data["train"],
            data["heldout"],
            out,
            extra_callbacks=[_kill_at(2)],
        )
    summary = train_model(
        job("causal", max_steps=3, save_steps=1, batch_size=2, learning_rate=5e-4),
        base,
        data["train"],
        data["heldout"],
        out,
    )
    assert summary["resumed_from_step"] == 0 and summary["first_logged_step_this_run"] == 1
    assert "job.settings.learning_rate: 0.001 -> 0.0005" in summary["fresh_start_reason"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"train_target": "space"}, "job.train_target: 'authors' -> 'space'"),
        ({"train_answer_cut": "quarter"}, "job.train_answer_cut: 'authors' -> 'quarter'"),
        ({"recipe_epochs": 2}, "job.recipe_epochs: None -> 2"),
    ],
)
def test_a_changed_training_switch_starts_over(change, named, tmp_path, data, smollm2_dir):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    out = tmp_path / "out"
    first = job("causal", max_steps=3, save_steps=1, batch_size=2)
    with pytest.raises(Killed):
        train_model(first, base, data["train"], data["heldout"], out, extra_callbacks=[_kill_at(2)])
    saved = json.loads((out / "checkpoints" / "run_settings.json").read_text())
    assert (saved["job"]["train_target"], saved["job"]["train_answer_cut"]) == ("authors", "authors")
    assert saved["job"]["recipe_epochs"] is None
    summary = train_model(replace(first, **change), base, data["train"], data["heldout"], out)
    assert summary["resumed_from_step"] == 0 and named in summary["fresh_start_reason"]
    assert summary["method"] == {
        "train_target": change.get("train_target", "authors"),
        "train_answer_cut": change.get("train_answer_cut", "authors"),
    }
    assert summary["recipe_epochs"] == change.get("recipe_epochs")
    assert summary["settings"]["epochs"] == 1.0  # max_steps is set: the recipe's epochs do not apply


def test_recipe_epochs_replace_the_models_epochs(tmp_path, data, smollm2_dir):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    train = {**TINY_TRAIN, "epochs": 1, "max_steps": None, "lr_scheduler": "cosine"}
    models = {"tiny-causal": {"kind": "causal", "max_new_tokens": 3, "train": train}}
    recipes = {"qa": {"dataset": "c3_qa", "template": "inbedder", "epochs": 2}}
    method = {"train_target": "space", "train_answer_cut": "quarter"}
    the_job = workflow_job("tiny-causal", "qa", {"models": models, "recipes": recipes, "method": method})
    out = tmp_path / "out"
    summary = train_model(the_job, base, data["train"], data["heldout"], out, keep_checkpoints=True)
    # 8 rows in batches of 4: 2 steps an epoch, 2 epochs
    assert summary["steps"] == 4 and summary["epochs_done"] == 2.0
    assert summary["settings"]["epochs"] == 2.0 and summary["recipe_epochs"] == 2
    assert summary["method"] == {"train_target": "space", "train_answer_cut": "quarter"}
    assert summary["answers_cut"] == 0  # C3 answers are far below 128 // 4 tokens
    saved = json.loads((tmp_path / "out" / "checkpoints" / "run_settings.json").read_text())
    assert saved["job"]["recipe_epochs"] == 2 and saved["job"]["settings"]["epochs"] == 1
    assert (saved["job"]["train_target"], saved["job"]["train_answer_cut"]) == ("space", "quarter")


# ---------------------------------------------------------------------------------------------- held-out curve


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


def _log_losses(folder: Path) -> list[str]:
    with open(folder / "train_log.csv", newline="") as fh:
        return [r["loss"] for r in csv.DictReader(fh)]


def test_heldout_curve_every_k_steps_leaves_the_training_untouched(
    tmp_path, data, bert_tokenizer_dir, monkeypatch
):
    import random

    import numpy as np

    # A masked LM with dropout 0.1: its training draws from the RNG at every step, so a check that
    # moved the RNG stream (or left the model in eval mode) would change the losses and the weights.
    base = tiny_model("masked", bert_tokenizer_dir, tmp_path / "tiny-masked")
    settings = {"max_steps": 5, "batch_size": 2}
    plain = train_model(job("masked", **settings), base, data["train"], data["heldout"], tmp_path / "plain")
    real_check = train_module.heldout_f1

    def check_drawing_random_numbers(*args, **kwargs):
        torch.rand(7), random.random(), np.random.rand(3)
        return real_check(*args, **kwargs)

    monkeypatch.setattr(train_module, "heldout_f1", check_drawing_random_numbers)
    out = tmp_path / "checked"
    checked = train_model(
        job("masked", heldout_every=2, **settings), base, data["train"], data["heldout"], out
    )

    # the same training: every logged loss and every weight
    assert _log_losses(out) == _log_losses(tmp_path / "plain")
    assert checked["last_step_loss"] == plain["last_step_loss"]
    for name, tensor in _weights(tmp_path / "plain").items():
        assert torch.equal(tensor, _weights(out)[name]), name
    # the curve: before (0), every 2 steps, after (the final step 5), in the CSV and the summary
    curve = read_curve(out / CURVE)
    assert [p["step"] for p in curve] == [0, 2, 4, 5]
    assert all(p["seconds"] is not None and p["seconds"] >= 0 for p in curve)
    assert (out / CURVE).read_text().splitlines()[0] == "step,heldout_token_f1,seconds,heldout_loss"
    # the held-out answer loss at every check, on the curve and in the summary (the masked LM's is ~ln(vocab))
    assert all(8 < p["loss"] < 12 for p in curve)
    before = checked["heldout_loss_before"]
    assert before == checked["heldout_curve"][0]["loss"] == pytest.approx(curve[0]["loss"])
    # the kept model: here no check beats the final one by token F1 (the job's metric), so the final step
    assert checked["heldout_metric"] == "token_f1" and checked["kept_step"] == 5
    assert [p["step"] for p in checked["heldout_curve"]] == [0, 2, 4, 5]
    assert checked["heldout_curve"][0]["f1"] == checked["heldout_token_f1_before"]
    assert checked["heldout_curve"][-1]["f1"] == pytest.approx(checked["heldout_token_f1_after"], abs=1e-6)
    assert checked["heldout_token_f1_after"] == plain["heldout_token_f1_after"]  # same weights, same answers
    assert checked["stopped_early"] is False and checked["stop_reason"] == "max_steps reached (5)"
    assert checked["plateau_step"] in (0, 2, 4, 5) and checked["settings"]["heldout_every"] == 2
    assert (out / "heldout_f1.png").read_bytes()[:4] == b"\x89PNG"
    # without checks: two points, and the figure all the same
    assert [p["step"] for p in plain["heldout_curve"]] == [0, 5]
    assert (tmp_path / "plain" / "heldout_f1.png").read_bytes()[:4] == b"\x89PNG"


def test_stop_when_flat_stops_at_the_first_flat_check_and_keeps_that_model(tmp_path, data, smollm2_dir):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    out = tmp_path / "out"
    # no rise can exceed a min_delta of 10 (F1 is 0-1): with patience 1 the first check after step 0 stops
    flat = job(
        "causal",
        max_steps=6,
        save_steps=2,
        batch_size=2,
        heldout_every=2,
        stop_when_flat={"patience": 1, "min_delta": 10},
    )
    summary = train_model(flat, base, data["train"], data["heldout"], out, keep_checkpoints=True)
    assert summary["steps"] == 2 and summary["stopped_early"] is True
    assert summary["plateau_step"] == 0 and [p["step"] for p in summary["heldout_curve"]] == [0, 2]
    assert summary["stop_reason"].startswith("stop_when_flat: the held-out token F1 rose by no more than 10")
    assert "(steps 2; patience 1)" in summary["stop_reason"]
    assert summary["settings"]["stop_when_flat"] == {"patience": 1, "min_delta": 10.0, "recipes": None}
    assert [p["step"] for p in read_curve(out / CURVE)] == [0, 2]
    with open(out / "train_log.csv", newline="") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2]
    # the stopping step gets no checkpoint: a rerun after a kill would replay up to it and stop again
    assert not (out / "checkpoints" / "checkpoint-2").exists()
    assert len(read_jsonl(out / "heldout_answers.jsonl")) == 4
    # the model saved is the model at the stopping step: the same as 2 steps without the rule
    two = train_model(
        job("causal", max_steps=2, save_steps=2, batch_size=2),
        base,
        data["train"],
        data["heldout"],
        tmp_path / "two",
    )
    assert two["last_step_loss"] == summary["last_step_loss"]
    for name, tensor in _weights(tmp_path / "two").items():
        assert torch.equal(tensor, _weights(out)[name]), name
    assert summary["heldout_token_f1_after"] == two["heldout_token_f1_after"]


def test_a_follower_ends_at_its_leaders_step(tmp_path, data, smollm2_dir):
    """train.steps_of: cut at the leader's final step, on the follower's own schedule (the learning rates
    of its steps are those of the uncut run)."""
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    leader = tmp_path / "tiny-causal-inbedder" / "train_summary.json"
    leader.parent.mkdir()
    leader.write_text(json.dumps({"steps": 3}))
    # as the workflow passes it (job_from_params): the leader's folder name, its summary read beside the run's
    the_job = replace(job("causal", max_steps=5, batch_size=2, heldout_every=2, lr_scheduler="linear"),
                      recipe="alpaca", steps_of="tiny-causal-inbedder")
    summary = train_model(the_job, base, data["train"], data["heldout"], tmp_path / "out")
    assert summary["steps"] == 3 and summary["steps_of"] == {"run": "tiny-causal-inbedder", "steps": 3}
    assert summary["stop_reason"] == ("steps_of: stopped at step 3, where tiny-causal-inbedder ended (the same "
                                      "number of steps)")
    assert [p["step"] for p in summary["heldout_curve"]] == [0, 2, 3]
    assert summary["settings"]["max_steps"] == 5  # the schedule of 5 steps, cut at 3
    lrs = [float(r["lr"]) for r in csv.DictReader((tmp_path / "out" / "train_log.csv").read_text().splitlines())]
    five = train_model(replace(the_job, stop_at_step=None, steps_of=None), base, data["train"], data["heldout"],
                       tmp_path / "five")
    assert lrs == [float(r["lr"]) for r in csv.DictReader((tmp_path / "five" / "train_log.csv").read_text().splitlines())][:3]
    assert five["steps"] == 5 and five["steps_of"] is None


def test_a_resumed_run_keeps_the_curve_up_to_its_checkpoint(tmp_path, data, smollm2_dir):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    out = tmp_path / "out"
    the_job = job("causal", max_steps=5, save_steps=2, batch_size=2, heldout_every=1)
    with pytest.raises(Killed):  # killed in step 4, before its check and its checkpoint
        train_model(the_job, base, data["train"], data["heldout"], out, extra_callbacks=[_kill_at(4)])
    # the points live beside the checkpoints until the run ends: Snakemake deletes an unfinished
    # job's outputs, heldout_curve.csv among them
    assert not (out / CURVE).exists()
    assert [p["step"] for p in read_curve(out / "checkpoints" / CURVE)] == [0, 1, 2, 3]
    assert scan_checkpoints(out / "checkpoints").complete.name == "checkpoint-2"
    saved = json.loads((out / "checkpoints" / "run_settings.json").read_text())
    assert "heldout_every" not in saved["job"]["settings"]  # checks alone change no weight: not in the run key
    # mark the points: step 1 (<= checkpoint-2) is kept as it is, step 3 (after it) is checked again
    marked = add_point(
        add_point(read_curve(out / "checkpoints" / CURVE), {"step": 1, "f1": 0.123, "seconds": 1.0}),
        {"step": 3, "f1": 0.987, "seconds": 1.0},
    )
    write_curve(out / "checkpoints" / CURVE, marked)
    summary = train_model(the_job, base, data["train"], data["heldout"], out)
    assert summary["resumed_from_step"] == 2
    straight = train_model(the_job, base, data["train"], data["heldout"], tmp_path / "straight")
    resumed = {p["step"]: p["f1"] for p in summary["heldout_curve"]}
    assert list(resumed) == [0, 1, 2, 3, 4, 5]
    assert resumed[1] == 0.123
    for step, f1 in {p["step"]: p["f1"] for p in straight["heldout_curve"]}.items():
        if step != 1:
            assert resumed[step] == pytest.approx(f1, abs=1e-6), step
    assert straight["last_step_loss"] == pytest.approx(summary["last_step_loss"], rel=1e-4)
    assert summary["settings"]["heldout_every"] == 1
    assert [p["step"] for p in read_curve(out / CURVE)] == [0, 1, 2, 3, 4, 5]  # written when the run ends


def test_a_resumed_run_counts_the_kept_checks_towards_patience(tmp_path, data, smollm2_dir):
    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    out = tmp_path / "out"
    stop = {"patience": 2, "min_delta": 10}  # checks 1 and 2 are flat: the run stops at step 2
    the_job = job("causal", max_steps=6, save_steps=1, batch_size=2, heldout_every=1, stop_when_flat=stop)
    with pytest.raises(Killed):  # killed in step 2, before its check: checkpoint-1 and checks 0, 1 remain
        train_model(the_job, base, data["train"], data["heldout"], out, extra_callbacks=[_kill_at(2)])
    summary = train_model(the_job, base, data["train"], data["heldout"], out)
    assert summary["resumed_from_step"] == 1
    assert summary["steps"] == 2 and summary["stopped_early"] is True  # not 3: check 1 was counted
    assert [p["step"] for p in summary["heldout_curve"]] == [0, 1, 2]


def test_one_drawing_of_the_curves_for_the_train_rule_and_the_report(tmp_path):
    import pandas as pd

    from inbedder.report.figures import figure_heldout, figure_loss

    losses = [3.0, 2.5, float("nan"), 2.0, 1.2, 1.1]
    pandas_ewm = pd.Series(losses).ewm(alpha=0.2).mean().tolist()
    assert moving_average(losses) == pytest.approx(pandas_ewm, nan_ok=True)
    rows = [{"step": i + 1, "loss": x, "lr": 1e-4} for i, x in enumerate(losses)]
    plot_loss(tmp_path / "loss.png", rows, "loss")
    curve = HeldoutCurve(tmp_path / CURVE, 2, None, lambda: (0.0, []))
    curve.start([], {"step": 0, "f1": 0.1, "seconds": 1.0})
    curve.add({"step": 2, "f1": 0.3, "seconds": 1.0})
    plot_heldout(tmp_path / "heldout_f1.png", curve, "held-out F1")
    assert {(tmp_path / name).read_bytes()[:4] for name in ("loss.png", "heldout_f1.png")} == {b"\x89PNG"}
    points = [{"step": 0, "f1": 0.1}, {"step": 2, "f1": 0.3}]
    run = {"name": "m-inbedder", "model": "m", "recipe": "inbedder", "log": pd.DataFrame(rows),
           "summary": {"heldout_curve": points, "stopped_early": True}}
    assert figure_loss([run]).png[:4] == figure_heldout([run]).png[:4] == b"\x89PNG"


def test_plateau_rule_and_curve_merging(tmp_path):
    def pts(*f1s, every=50):
        return [{"step": i * every, "f1": f, "seconds": 1.0} for i, f in enumerate(f1s)]

    rising = pts(0.06, 0.15, 0.21, 0.25)
    assert plateau(rising, 2, 0.005) == plateau(rising, 2, 0.005).__class__(False, 150, 0.25, ())
    # +0.004 is no rise at min_delta 0.005; the best stays at step 50; two such points stop
    flat = plateau(pts(0.10, 0.20, 0.204, 0.19), 2, 0.005)
    assert (flat.stop, flat.best_step, flat.best_value, flat.flat_steps) == (True, 50, 0.20, (100, 150))
    assert not plateau(pts(0.10, 0.20, 0.204, 0.19), 3, 0.005).stop
    assert not plateau(pts(0.10, 0.20, 0.19, 0.30), 2, 0.005).stop  # a rise resets the count
    # no rule: never stops; the best is the highest point (the first to reach it)
    assert plateau(pts(0.1, 0.3, 0.3, 0.2), None) == plateau(rising, 2).__class__(False, 50, 0.3, (100, 150))
    # merging: a point replaces the one of its step; a resumed run keeps the points up to its checkpoint
    curve = add_point(
        add_point(pts(0.1, 0.2, 0.3, every=25), {"step": 25, "f1": 0.5}), {"step": 10, "f1": 0.4}
    )
    assert [(p["step"], p["f1"]) for p in curve] == [(0, 0.1), (10, 0.4), (25, 0.5), (50, 0.3)]
    assert [p["step"] for p in curve_until(curve, 25)] == [0, 10, 25]
    assert curve_until(curve, 0) == [curve[0]]
    write_curve(tmp_path / CURVE, curve)
    back = read_curve(tmp_path / CURVE)
    assert [(p["step"], p["f1"]) for p in back] == [(0, 0.1), (10, 0.4), (25, 0.5), (50, 0.3)]
    assert [p["seconds"] for p in back] == [1.0, None, None, 1.0]
    assert read_curve(tmp_path / "none.csv") == []
    (tmp_path / "bad.csv").write_text("step,heldout_token_f1,seconds\n0,0.1,\nten,0.2,\n")
    with pytest.raises(ValueError, match=r"bad.csv:3: not a held-out curve row"):
        read_curve(tmp_path / "bad.csv")


def test_heldout_keys_in_the_run_key_only_when_they_change_the_weights():
    plain = job("causal")
    checked = replace(plain, settings=replace(plain.settings, heldout_every=50))
    assert plain.run_key_settings() == checked.run_key_settings()  # checks alone keep the checkpoints
    assert not {"heldout_every", "stop_when_flat"} & set(plain.run_key_settings())
    stop = {"patience": 2, "min_delta": 0.005, "recipes": ["inbedder"]}
    stopping = replace(
        plain,
        settings=TrainSettings(**{**asdict_settings(plain), "heldout_every": 50, "stop_when_flat": stop}),
    )
    key = stopping.run_key_settings()
    assert key["stop_when_flat"] == {"patience": 2, "min_delta": 0.005} and key["heldout_every"] == 50
    every_25 = replace(stopping, settings=replace(stopping.settings, heldout_every=25))
    assert every_25.run_key_settings() != key  # with the stop, the checks decide where training ends
    # a recipe the rule does not list trains to its budget: no stop, and the keys stay out of its run key
    alpaca = replace(stopping, recipe="alpaca")
    assert alpaca.effective_settings().stop_when_flat is None
    assert stopping.effective_settings().stop_when_flat.patience == 2
    assert alpaca.run_key_settings() == plain.run_key_settings()
    # the held-out metric: in the run key only where it decides the stop, and only when not the former F1
    assert replace(stopping, heldout_metric="loss").run_key_settings() == {**key, "heldout_metric": "loss"}
    assert replace(checked, heldout_metric="loss").run_key_settings() == plain.run_key_settings()
    assert "heldout_metric" not in key
    # an asdict round trip (the kill tests' child process) gives the same settings
    assert TrainSettings(**asdict_settings(stopping)) == stopping.settings


def asdict_settings(the_job: TrainJob) -> dict:
    from dataclasses import asdict

    return asdict(the_job.settings)


@pytest.mark.parametrize(
    ("values", "error"),
    [
        ({"heldout_every": 0}, r"models.m.train.heldout_every: 0 is less than the minimum of 1"),
        ({"heldout_every": "50"}, r"models.m.train.heldout_every: '50' is not of type 'integer', 'null'"),
        ({"heldout_every": True}, r"models.m.train.heldout_every: True is not of type 'integer', 'null'"),
        (
            {"stop_when_flat": {"patience": 2}},
            r"models.m.train.stop_when_flat: needs models.m.train.heldout_every .* which is null",
        ),
        (
            {"heldout_every": 5, "stop_when_flat": {"patience": 0}},
            r"models.m.train.stop_when_flat.patience: 0 is less than the minimum of 1",
        ),
        (
            {"heldout_every": 5, "stop_when_flat": {"min_delta": 0.1}},
            r"models.m.train.stop_when_flat: 'patience' is a required property",
        ),
        (
            {"heldout_every": 5, "stop_when_flat": {"patience": 2, "min_delta": -0.1}},
            r"models.m.train.stop_when_flat.min_delta: -0.1 is less than the minimum of 0",
        ),
        (
            {"heldout_every": 5, "stop_when_flat": {"patience": 2, "delta": 0.1}},
            r"models.m.train.stop_when_flat: Additional properties .*'delta' was unexpected",
        ),
        (
            {"heldout_every": 5, "stop_when_flat": {"patience": 2, "recipes": "inbedder"}},
            r"models.m.train.stop_when_flat.recipes: 'inbedder' is not of type 'array', 'null'",
        ),
        (
            {"heldout_every": 5, "stop_when_flat": 3},
            r"models.m.train.stop_when_flat: 3 is not of type 'object', 'null'",
        ),
        ({"warmup_ratio": 1}, r"models.m.train.warmup_ratio: 1 is greater than or equal to the maximum of 1"),
        ({"max_length": 4}, r"models.m.train.max_length: 4 is less than the minimum of 8"),
    ],
)
def test_bad_train_keys_give_the_schemas_errors(values, error):
    with pytest.raises(ValueError, match=error):
        TrainSettings.from_config({**TINY_TRAIN, **values}, where="models.m.train")


def test_the_stop_rule_gets_the_schemas_defaults():
    stopping = {"heldout_every": 5, "stop_when_flat": {"patience": 2}}
    settings = TrainSettings.from_config({**TINY_TRAIN, **stopping})
    assert (settings.stop_when_flat.min_delta, settings.stop_when_flat.recipes) == (0.0, None)


def test_the_offline_full_profile_stops_inbedder_when_flat_and_trains_alpaca_to_the_cap():
    profiles = ROOT / "workflow" / "profiles"
    config = load_config(
        ROOT / "config.yaml", profiles / "offline" / "run.yaml", profiles / "offline-full" / "run.yaml"
    )
    for model in ("smollm2-135m", "gemma3-270m"):
        jobs = {
            recipe: job_from_params(
                {**train_params(model, recipe, config), "device": "cpu", "dtype": "float32"}
            )
            for recipe in ("inbedder", "alpaca")
        }
        inbedder, alpaca = (jobs[r].effective_settings() for r in ("inbedder", "alpaca"))
        assert inbedder.heldout_every and inbedder.stop_when_flat is not None
        assert alpaca.stop_when_flat is None and alpaca.heldout_every == inbedder.heldout_every
        assert alpaca.max_steps == inbedder.max_steps  # the same cap


# ---------------------------------------------------------------------------------------------- bad input


def test_bad_input_gives_clear_errors(tmp_path, data, smollm2_dir):
    recipes = {
        "qa": {"dataset": "c3_qa", "template": "inbedder"},
        "ghost": {"dataset": "nope", "template": "alpaca"},
    }
    models = {
        "smollm2-135m": MODELS["smollm2-135m"],
        "lstm": {"kind": "rnn", "source": {"hub": "a/b"}, "train": TINY_TRAIN},
        "minilm-l6": MODELS["minilm-l6"],
    }
    config = {"models": models, "recipes": recipes}
    tables = tmp_path / "data" / "train"

    def train(model, recipe, config=config, **where):
        the_job = workflow_job(model, recipe, config, **where)
        files = (tables / f"{recipe}.jsonl", tables / f"{recipe}.heldout.jsonl")
        return train_model(the_job, smollm2_dir, *files, tmp_path / "o")

    with pytest.raises(
        FileNotFoundError, match=r"recipe 'ghost' \(dataset 'nope'\).*ghost\.jsonl does not exist"
    ):
        train("smollm2-135m", "ghost")
    with pytest.raises(ValueError, match=r"model 'lstm'.*'rnn'.*allowed kinds: causal, masked, seq2seq"):
        train("lstm", "qa")
    with pytest.raises(ValueError, match="'minilm-l6' has kind 'sentence-encoder', which is not trained"):
        # max_new_tokens as the schema fills it in
        encoder = {**MODELS["minilm-l6"], "max_new_tokens": 3, "train": TINY_TRAIN}
        train("minilm-l6", "qa", {"models": {"minilm-l6": encoder}, "recipes": recipes})
    with pytest.raises(ValueError, match="recipe 'none' is never trained"):
        train("smollm2-135m", "none")
    with pytest.raises(KeyError, match="recipe 'qa2'"):
        train("smollm2-135m", "qa2")
    unknown = {"smollm2-135m": {**MODELS["smollm2-135m"], "train": {**TINY_TRAIN, "lr": 1}}}
    with pytest.raises(ValueError, match=r"models.smollm2-135m.train: Additional properties .*'lr' was"):
        train("smollm2-135m", "qa", {**config, "models": unknown})
    with pytest.raises(ValueError, match=r"models.smollm2-135m.train.seed: missing"):
        train("smollm2-135m", "qa", {**config, "models": {"smollm2-135m": {
            **MODELS["smollm2-135m"], "train": {k: v for k, v in TINY_TRAIN.items() if k != "seed"}}}})
    with pytest.raises(ValueError, match=r"recipes.qa.epochs: 0 is less than or equal to the minimum of 0"):
        train("smollm2-135m", "qa", {**config, "recipes": {"qa": {**recipes["qa"], "epochs": 0}}})
    with pytest.raises(ValueError, match=r"method.train_answer_cut: 'half' is not one of 'authors', 'quarter'"):
        train("smollm2-135m", "qa", method={"train_answer_cut": "half"})
    with pytest.raises(ValueError, match=r"method.train_target: 'spaces' is not one of 'authors', 'space'"):
        replace(job("causal"), train_target="spaces")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q", "input": "t", "output": "a"}\n{"instruction": "q", "input": "t"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: field\(s\) \['output'\] missing"):
        read_rows(bad, "training data")
    assert not (tmp_path / "o").exists()


def test_rule_params_hold_exactly_the_models_training_settings():
    config = load_config(ROOT / "config.yaml", ROOT / "workflow" / "profiles" / "offline" / "run.yaml")
    params = train_params("smollm2-135m", "inbedder", config)
    # all of the train block but the keys that say which runs there are (seeds, the lr sweep's)
    assert params["train"] == {k: v for k, v in config["models"]["smollm2-135m"]["train"].items()
                               if k not in RUN_KEYS}
    assert {"lr_sweep", "lr_sweep_steps", "lr_rule"} <= set(RUN_KEYS)
    assert params["train"]["max_steps"] == 30 and params["kind"] == "causal"
    assert (params["template"], params["max_new_tokens"]) == ("inbedder", 3)
    assert params["heldout_rows"] == config["limits"]["heldout_rows"]
    # Another model's settings do not reach this rule's params (no needless retraining).
    config["models"]["opt-350m"]["train"]["learning_rate"] = 1.0
    assert train_params("smollm2-135m", "inbedder", config) == params
    assert params["loop"] == TRAIN_LOOP  # a change of the training loop retrains
    job = job_from_params({**params, "device": "cpu", "dtype": "float32"})
    assert job.settings.learning_rate == 1e-4 and job.settings.lr_scheduler == "constant_with_warmup"
    # the training switches of `method` (the authors' values) and the recipe's epochs
    assert (params["train_target"], params["train_answer_cut"], params["recipe_epochs"]) == ("authors", "authors", None)
    assert (job.train_target, job.train_answer_cut, job.recipe_epochs) == ("authors", "authors", None)
    alpaca = train_params("smollm2-135m", "alpaca", config)
    assert alpaca["recipe_epochs"] == 3  # config.yaml's, kept by the offline profile ...
    alpaca_job = job_from_params({**alpaca, "device": "cpu", "dtype": "float32"})
    assert alpaca_job.effective_settings().epochs == 1  # ... where the step budget wins
    assert alpaca_job.effective_settings().max_steps == 30
    for key, value in (("train_target", "space"), ("train_answer_cut", "quarter")):
        method = {**config["method"], key: value}
        changed = train_params("smollm2-135m", "inbedder", {**config, "method": method})
        assert changed == {**params, key: value}
    other = {**config, "method": {**config["method"], "filter": "words", "special_steps": "keep_eos"}}
    assert train_params("smollm2-135m", "inbedder", other) == params  # encode-side switches do not retrain
    with pytest.raises(ValueError, match=r"method.train_target: 'spaces' is not one of 'authors', 'space'"):
        train_params("smollm2-135m", "inbedder", {**config, "method": {"train_target": "spaces"}})
    with pytest.raises(ValueError, match="recipe 'none' is never trained"):
        train_params("smollm2-135m", "none", config)


def test_the_paper_profile_trains_alpaca_for_3_epochs():
    config = load_config(ROOT / "config.yaml")
    for recipe, epochs in (("alpaca", 3.0), ("inbedder", 1.0)):
        params = train_params("opt-350m", recipe, config)
        job = job_from_params({**params, "device": "cpu", "dtype": "float32"})
        assert job.settings.epochs == 1 and job.settings.max_steps is None
        assert job.effective_settings().epochs == epochs
    config["recipes"]["alpaca"]["epochs"] = 0
    with pytest.raises(ValueError, match=r"recipes.alpaca.epochs: 0 is less than or equal to the minimum"):
        train_params("opt-350m", "alpaca", config)


def test_no_checkpoint_of_the_final_step_unless_checkpoints_are_kept(tmp_path, data, smollm2_dir):
    """Trainer would save the step training ends at; the final model is written next and the checkpoints
    deleted, so that save is skipped, for the step cap and for a stop asked by a callback alike."""
    from transformers import TrainerCallback

    class Saves(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[int] = []

        def on_save(self, args, state, control, **kwargs):
            self.steps.append(state.global_step)

    base = tiny_model("causal", smollm2_dir, tmp_path / "tiny-causal")
    capped, kept = Saves(), Saves()
    the_job = job("causal", max_steps=4, save_steps=2, batch_size=2)
    summary = train_model(the_job, base, data["train"], data["heldout"], tmp_path / "capped", extra_callbacks=[capped])
    assert capped.steps == [2] and summary["steps"] == 4
    assert not (tmp_path / "capped" / "checkpoints").exists()
    train_model(the_job, base, data["train"], data["heldout"], tmp_path / "kept", extra_callbacks=[kept],
                keep_checkpoints=True)
    assert kept.steps == [2, 4]
    assert scan_checkpoints(tmp_path / "kept" / "checkpoints").complete.name == "checkpoint-4"
    # the same weights either way: skipping the save changes nothing that is trained
    assert (tmp_path / "capped" / "model.safetensors").read_bytes() == (tmp_path / "kept" / "model.safetensors").read_bytes()
