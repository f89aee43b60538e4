"""The model kinds, one class each: how a model of the kind is loaded, padded, prompted, decoded, trained
and pooled.

Config `models.<m>.kind` names the kind (`inbedder.vocabulary`); `kind_of(name)` gives its `ModelKind`,
and every stage asks that object rather than comparing the name:

- causal (opt, llama, SmolLM2, Gemma): `AutoModelForCausalLM`; prompts padded and cut (`method.truncation:
  authors`) on the left; greedy or sampled decoding with the KV cache (`decoding.run_causal`), step 0 is the
  last prompt token; trained on the answer tokens and EOS, the LM head run at the label positions only;
- masked (roberta): `AutoModelForMaskedLM`; `<cls> prompt <mask> x n <sep>` padded on the right, one forward
  pass (`decoding.run_masked`); trained with every answer token masked at once; every mask is a step (no
  special-step rule, and the authors' filter ids are never applied: their masked encoder ignores them);
- seq2seq (t5): `AutoModelForSeq2SeqLM`; the prompt padded and cut on the right for the encoder, the decoder
  answers (`decoding.run_seq2seq`); trained with the answer as the decoder's target; under
  `method.special_steps: authors` its 1st-gen is the first step left;
- sentence-encoder: a sentence-transformers folder (`modules.json`); embeds the text alone and behind the
  instruction (`instructor` template); nothing to decode or train.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

from inbedder.decoding import StepStates, run_causal, run_masked, run_seq2seq
from inbedder.tokens import IGNORE_INDEX, eos_id, pad_id, special_ids, text_ids
from inbedder.vocabulary import CAUSAL, MASKED, MODEL_KINDS, SENTENCE_ENCODER, SEQ2SEQ


class ModelKind:
    """What a model kind does; each kind's class sets the attributes and overrides the methods that differ."""

    name: ClassVar[str]
    generative: ClassVar[bool] = True  # an LM head that answers the instruction
    encodes_sentences: ClassVar[bool] = False  # embeds a text whole, so it can serve as the re-encoder
    samples: ClassVar[bool] = False  # decodes token by token, so it can sample (decoding, re-encode-multi)
    auto_class_name: ClassVar[str | None] = None  # the transformers Auto class with the LM head
    architecture_suffix: ClassVar[str | None] = None  # how config.json `architectures` of the kind end
    marker_file: ClassVar[str] = "config.json"  # the file that marks a model folder of the kind
    padding_side: ClassVar[str] = "right"  # the side a batch of prompts is padded on when decoding
    truncation_side: ClassVar[str] = "left"  # the side `method.truncation: authors` cuts a long prompt on
    default_mode: ClassVar[str] = "1st-gen"  # the mode the `inbedder` command uses without --mode
    # pooling (`inbedder.pooling`) under `method.special_steps: authors`
    drops_special_steps: ClassVar[bool] = True  # a step predicting a special token is left out
    first_gen_is_first_kept: ClassVar[bool] = False  # 1st-gen is the first step left, not step 0
    applies_authors_filter: ClassVar[bool] = True  # the authors' filter ids drop steps
    # training (`inbedder.train_data`, `inbedder.train_loop`)
    trainable: ClassVar[bool] = True
    prompt_special_tokens: ClassVar[bool] = True  # the tokenizer adds its special tokens to a prompt
    decoder_target: ClassVar[bool] = False  # the answer is a decoder's target, not joined to the prompt
    answer_only_loss: ClassVar[bool] = False  # the LM head and the loss run at the label positions only
    shifts_labels: ClassVar[bool] = False  # the model's loss predicts label t from the states before t

    def __repr__(self) -> str:
        return f"<model kind {self.name}>"

    # loading

    def auto_class(self):
        """The transformers Auto class that loads a model of this kind with its LM head."""
        if self.auto_class_name is None:
            allowed = ", ".join(k.name for k in KINDS.values() if k.auto_class_name)
            raise ValueError(f"kind {self.name!r} has no language-model class; allowed: {allowed}")
        import transformers

        return getattr(transformers, self.auto_class_name)

    def attention(self, device: str) -> str | None:
        """The attention implementation inference uses on `device` (None: the model's default)."""
        return None

    # prompting

    def prompt_template(self, template: str) -> str:
        """The template this kind is prompted with, given the recipe's."""
        return template

    def prompt_fit(self, tokenizer, max_length: int, max_new_tokens: int) -> dict[str, Any]:
        """How `inbedder.text.prompt_token_ids` fits a prompt: token budget, special tokens, cut side."""
        return {"budget": max_length, "add_special_tokens": self.prompt_special_tokens,
                "side": self.truncation_side}

    # decoding

    def decode(self, model, tokenizer, token_ids: Sequence[Sequence[int]], *, max_new_tokens: int,
               layers: Sequence[int], batch_size: int, eos: set[int],
               sampling: Mapping[str, Any] | None = None, keep_states: bool = True,
               specials_in_prompt_modes: bool = True, progress: Callable[[int], None] | None = None,
               sink=None) -> StepStates:
        """One pass over tokenised prompts: the answers and the configured layers' states (`inbedder.decoding`
        runs it).

        `sampling` (temperature, top_p, generator) draws the tokens instead of taking the argmax;
        `specials_in_prompt_modes` is config `method.masked_prompt_modes: authors` (masked LMs).
        """
        allowed = ", ".join(k.name for k in KINDS.values() if k.generative)
        raise ValueError(f"cannot generate answers with a model of kind {self.name!r}; allowed: {allowed}")

    # training

    def wrap_ids(self, tokenizer) -> tuple[list[int], list[int]]:
        """The special ids a training example gets around its prompt and answer (head, tail), beyond the
        ones the tokenizer adds to the prompt."""
        return [], []

    def join(self, tokenizer, prompt: str, answer: str, train_target: str) -> tuple[list[int], int, int]:
        """Prompt and answer as one id sequence per `method.train_target`: (ids, prompt ids, answer ids);
        the ids after the answer end the example."""
        raise ValueError(f"a {self.name} model does not join its prompt and answer into one sequence")

    def labelled(self, tokenizer, ids: Sequence[int], prompt: int,
                 answer: int) -> tuple[list[int], list[int]]:
        """(model inputs, labels) of a joined example: this kind's training target."""
        raise ValueError(f"a {self.name} model has no joined training target")


class Causal(ModelKind):
    """A decoder-only LM: answers by greedy (or sampled) decoding after the prompt."""

    name = CAUSAL
    samples = True
    auto_class_name = "AutoModelForCausalLM"
    architecture_suffix = "ForCausalLM"
    padding_side = "left"
    answer_only_loss = True
    shifts_labels = True

    def attention(self, device: str) -> str | None:
        # for prompts of tens of tokens "eager" measured 7-10% faster on CPU than SDPA's flash kernel
        return "eager" if device == "cpu" else None

    def decode(self, model, tokenizer, token_ids, *, max_new_tokens, layers, batch_size, eos, sampling=None,
               keep_states=True, specials_in_prompt_modes=True, progress=None, sink=None) -> StepStates:
        return run_causal(model, token_ids, max_new_tokens=max_new_tokens, layers=layers,
                          batch_size=batch_size, eos=eos, pad_id=pad_id(tokenizer, eos),
                          keep_states=keep_states, progress=progress, sink=sink, **(sampling or {}))

    def join(self, tokenizer, prompt, answer, train_target):
        eos = eos_id(tokenizer)
        prompt_ids = tokenizer(prompt).input_ids
        if train_target == "space":
            answer_ids = text_ids(tokenizer, " " + answer)
            return prompt_ids + answer_ids + [eos], len(prompt_ids), len(answer_ids)
        ids = tokenizer(prompt + answer + tokenizer.convert_ids_to_tokens(eos)).input_ids
        if not ids or ids[-1] != eos:
            raise ValueError(
                f"tokenizer {tokenizer.name_or_path!r}: its EOS text does not tokenise to id {eos}")
        n = min(len(prompt_ids), len(ids) - 1)
        return ids, n, len(ids) - 1 - n

    def labelled(self, tokenizer, ids, prompt, answer):
        return list(ids), [IGNORE_INDEX] * prompt + list(ids[prompt:])


class Masked(ModelKind):
    """A masked LM: answers by filling `max_new_tokens` masks after the prompt in one forward pass."""

    name = MASKED
    auto_class_name = "AutoModelForMaskedLM"
    architecture_suffix = "ForMaskedLM"
    drops_special_steps = False
    applies_authors_filter = False
    prompt_special_tokens = False

    def prompt_fit(self, tokenizer, max_length, max_new_tokens):
        head, tail = special_ids(tokenizer)
        return {"budget": max_length - max_new_tokens - len(head) - len(tail), "add_special_tokens": False,
                "side": self.truncation_side}

    def decode(self, model, tokenizer, token_ids, *, max_new_tokens, layers, batch_size, eos, sampling=None,
               keep_states=True, specials_in_prompt_modes=True, progress=None, sink=None) -> StepStates:
        return run_masked(model, tokenizer, token_ids, n_masks=max_new_tokens, layers=layers,
                          batch_size=batch_size, progress=progress, sink=sink,
                          specials_in_prompt_modes=specials_in_prompt_modes)

    def wrap_ids(self, tokenizer):
        return special_ids(tokenizer)

    def join(self, tokenizer, prompt, answer, train_target):
        head, tail = special_ids(tokenizer)
        if train_target == "space":
            prompt_ids = text_ids(tokenizer, prompt)
            answer_ids = text_ids(tokenizer, " " + answer)
            return head + prompt_ids + answer_ids + tail, len(head) + len(prompt_ids), len(answer_ids)
        ids = tokenizer(prompt + answer).input_ids
        n = min(len(tokenizer(prompt).input_ids), len(ids)) - len(tail)
        return ids, n, len(ids) - len(tail) - n

    def labelled(self, tokenizer, ids, prompt, answer):
        if tokenizer.mask_token_id is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has no mask token; not a masked LM")
        stop = prompt + answer
        input_ids = list(ids[:prompt]) + [tokenizer.mask_token_id] * answer + list(ids[stop:])
        labels = [IGNORE_INDEX] * prompt + list(ids[prompt:stop]) + [IGNORE_INDEX] * (len(ids) - stop)
        return input_ids, labels


class Seq2seq(ModelKind):
    """An encoder-decoder LM: the encoder reads the prompt, the decoder answers."""

    name = SEQ2SEQ
    samples = True
    auto_class_name = "AutoModelForSeq2SeqLM"
    architecture_suffix = "ForConditionalGeneration"
    truncation_side = "right"
    first_gen_is_first_kept = True
    decoder_target = True

    def decode(self, model, tokenizer, token_ids, *, max_new_tokens, layers, batch_size, eos, sampling=None,
               keep_states=True, specials_in_prompt_modes=True, progress=None, sink=None) -> StepStates:
        return run_seq2seq(model, token_ids, max_new_tokens=max_new_tokens, layers=layers,
                           batch_size=batch_size, eos=eos, pad_id=pad_id(tokenizer, eos),
                           keep_states=keep_states, progress=progress, sink=sink, **(sampling or {}))


class SentenceEncoder(ModelKind):
    """A sentence-transformers model: embeds a text whole; it neither answers nor is fine-tuned."""

    name = SENTENCE_ENCODER
    generative = False
    encodes_sentences = True
    marker_file = "modules.json"
    default_mode = "prefixed"
    trainable = False

    def prompt_template(self, template: str) -> str:
        return "instructor"  # its `prefixed` mode embeds "{instruction}: {text}"


KINDS: dict[str, ModelKind] = {k.name: k for k in (Causal(), Masked(), Seq2seq(), SentenceEncoder())}
if tuple(KINDS) != MODEL_KINDS:
    raise RuntimeError(f"model kinds {tuple(KINDS)} differ from inbedder.vocabulary's {MODEL_KINDS}")
# the kinds that decode answers token by token (the others fill masks in one pass, or do not answer)
SAMPLING_KINDS: tuple[str, ...] = tuple(name for name, k in KINDS.items() if k.samples)


def kind_of(name: str, key: str = "kind") -> ModelKind:
    """The ModelKind called `name`; a ValueError naming the config `key` for an unknown one."""
    if name not in KINDS:
        raise ValueError(f"{key}: {name!r} is not a model kind; known kinds: {', '.join(KINDS)}")
    return KINDS[name]
