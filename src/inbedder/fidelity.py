"""Every known way this reproduction's method can differ from the authors' code, as a named switch.

The authors' code is `zhang-yu-wei/InBedder` at commit `e7747148` (the commit that holds their released
result files). Each `Switch` names the config key that selects a behaviour, the allowed values, the
value that follows the authors, the alternative this project used before (kept where it is a deliberate
choice), and the lines of the authors' code it follows (`Citation`, with a short text those lines hold,
so a test can check the citation against the authors' repository). `moves` names the tables of
`paper_numbers.csv` whose numbers the switch can change. docs/fidelity.md gives the reading behind each
entry. `authors_stopwords()` is the authors' stopword list (NLTK's English list, 179 words), packaged
as `data/nltk_english_stopwords.txt`. The config schema's `method` block defaults every key to its switch's
`authors` value (tests/test_fidelity.py holds the two together); the report's rows of a run's values
beside the authors' are built in `inbedder.fidelity_rows`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

AUTHORS_REPO = "zhang-yu-wei/InBedder"
AUTHORS_COMMIT = "e7747148"
STOPWORDS_FILE = "nltk_english_stopwords.txt"
STOPWORDS_COUNT = 179
# The filler phrases of the authors' filter configs, trailing space included (it is a token of its own).
AUTHORS_FILLERS: tuple[str, ...] = ("Based on ", "Sure! ")
# Tables of paper_numbers.csv a switch can move.
PAPER_TABLES = ("instruction_awareness", "generic", "filtering", "modes")


@dataclass(frozen=True)
class Citation:
    """Lines `first`..`last` (1-based, inclusive) of `path` in the authors' repository, holding `needle`."""

    path: str
    first: int
    last: int
    needle: str

    def __post_init__(self) -> None:
        if not self.path or self.path.startswith("/"):
            raise ValueError(f"citation path must be relative to the authors' repository, got {self.path!r}")
        if not 1 <= self.first <= self.last:
            raise ValueError(f"{self.path}: need 1 <= first <= last, got {self.first}..{self.last}")
        if not self.needle.strip():
            raise ValueError(f"{self.path}:{self.first}: the needle (text the cited lines hold) is empty")

    def __str__(self) -> str:
        lines = str(self.first) if self.first == self.last else f"{self.first}-{self.last}"
        return f"{self.path}:{lines}"


@dataclass(frozen=True)
class Switch:
    """One difference between the authors' method and ours, selectable by a config key.

    `configurable` False marks a known deviation that no config key selects: `key` then only names it,
    `ours` is what every run does, and `method_settings` leaves it out."""

    key: str
    values: tuple[Any, ...]
    authors: Any
    ours: Any
    follows: tuple[Citation, ...]
    description: str
    moves: tuple[str, ...]
    configurable: bool = True

    def __post_init__(self) -> None:
        where = f"switch {self.key!r}"
        if not self.key or self.key != self.key.strip():
            raise ValueError(f"{where}: the config key is empty or padded")
        if len(self.values) < 2 or len(set(self.values)) != len(self.values):
            raise ValueError(f"{where}: needs at least two distinct values, got {self.values!r}")
        if self.authors not in self.values or self.ours not in self.values:
            raise ValueError(f"{where}: authors {self.authors!r} and ours {self.ours!r} must be among {self.values!r}")
        if self.authors == self.ours:
            raise ValueError(f"{where}: the authors' value and ours are the same ({self.authors!r})")
        if not self.follows:
            raise ValueError(f"{where}: cites none of the authors' lines")
        if not self.description.endswith(".") or self.description.count(". ") > 0:
            raise ValueError(f"{where}: the description must be one sentence ending in a full stop")
        unknown = sorted(set(self.moves) - set(PAPER_TABLES))
        if not self.moves or unknown:
            raise ValueError(f"{where}: moves must name tables of {PAPER_TABLES}, got {self.moves!r}")

    @property
    def citations(self) -> str:
        """The cited lines as one string, `path:line` joined by `; ` (the report's column)."""
        return "; ".join(str(c) for c in self.follows)


def _c(path: str, first: int, last: int | None, needle: str) -> Citation:
    return Citation(path, first, first if last is None else last, needle)


_CAUSAL = "lm_encoders_hf/causallm_encoder_hf.py"
_MASKED = "lm_encoders_hf/maskedlm_encoder_hf.py"
_SEQ2SEQ = "lm_encoders_hf/seq2seqlm_encoder_hf.py"
_TRAIN = "alpaca_train/train.py"
_TRAIN_SH = "alpaca_train/scripts/train.sh"

SWITCHES: tuple[Switch, ...] = (
    Switch(
        key="method.truncation",
        values=("authors", "keep_instruction"),
        authors="authors",
        ours="keep_instruction",
        follows=(
            _c(_CAUSAL, 55, None, 'truncation_side="left"'),
            _c(_CAUSAL, 179, None, "truncation=True, max_length=self.max_input_length"),
            _c(_MASKED, 53, None, 'truncation_side="left"'),
            _c(_MASKED, 167, None, "self.tokenizer.mask_token * self.generation_configs['mask_length']"),
            _c(_SEQ2SEQ, 52, None, 'truncation_side="right"'),
            _c("mteb/abstasks/AbsTaskClustering.py", 40, 41, "sent.split(\" \")[-truncate_to_length:]"),
            _c("configs/causallm_opt-1.3b-alpaca.json", 6, None, '"truncate_to_length": 400'),
        ),
        description=("authors: the whole prompt is cut to 512 tokens from the left for causal and masked "
                     "models (an Alpaca-template prompt loses its instruction) and from the right for "
                     "seq2seq (a QA-template prompt loses its instruction), and opt-1.3b-alpaca first kept "
                     "the last 400 words of each clustering text; keep_instruction: the input text is cut "
                     "at its end and the instruction always kept."),
        moves=("instruction_awareness", "modes"),
    ),
    Switch(
        key="method.special_steps",
        values=("authors", "keep_eos"),
        authors="authors",
        ours="keep_eos",
        follows=(
            _c(_CAUSAL, 241, None, "get_special_tokens_mask(decoded_ids[batch_id][1:]"),
            _c(_CAUSAL, 276, 281, "generation_hidden_states = hidden_states[1][layer_id][batch_id]"),
            _c(_CAUSAL, 290, None, "torch.cat([prompt_hidden_states_remove_pad[-1:, :], generation_hidden_states]"),
            _c(_SEQ2SEQ, 250, None, "get_special_tokens_mask(decoded_ids[batch_id][1:]"),
            _c(_SEQ2SEQ, 272, 276, "generation_hidden_states = decoder_hidden_states[0][decoder_layer_id][batch_id]"),
        ),
        description=("authors: a generation step whose predicted token is special (EOS, pad) is left out of "
                     "avg-gen, last-gen and avg-all, avg-gen always holds the 1st-gen state, and when no "
                     "later step is kept the state at the first generated token stands in; keep_eos: every "
                     "step up to and including the one that predicts EOS is kept."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="method.filter",
        values=("authors", "words"),
        authors="authors",
        ours="words",
        follows=(
            _c("evaluation.py", 11, None, "nltk.download('stopwords')"),
            _c("evaluation.py", 63, 66, 'filter_words[task] += stopwords.words("english")'),
            _c(_CAUSAL, 143, 148, "filter_ids |= set(self.tokenizer.encode(filter_word))"),
            _c(_CAUSAL, 243, 248, "[1 if token_id in filter_ids else mask[pos] for pos, token_id in enumerate(ids[1:])]"),
            _c("configs/causallm_llama-2-7b-chat-pretrain-filter.json", 13, None,
               '"IntentEmotion": ["How does the customer feel?", "What does the customer need?"'),
            _c("configs/causallm_llama-2-7b-chat-pretrain-filter.json", 25, None,
               '"InstructSTSBenchmark": ["Based on ", "Sure! "]'),
            _c("mteb/abstasks/AbsTaskTriplet.py", 23, None, "kwargs['filter_words'][self.description['name']]"),
        ),
        description=("authors: a step is dropped when the token it predicts has an id among the ids of NLTK's "
                     "179 English stopwords, the task's instructions and the fillers \"Based on \" and "
                     "\"Sure! \", each string encoded on its own and matched case-sensitively, and the 1st-gen "
                     "state always stays; words: a step is dropped when its token, decoded and lower-cased, is "
                     "one of scikit-learn's 318 stopwords, a token of the row's own instruction or of a filler."),
        moves=("filtering",),
    ),
    Switch(
        key="re_encoder",
        values=("komninos", "e5-large-v2"),
        authors="komninos",
        ours="e5-large-v2",
        follows=(
            _c("evaluation.py", 59, None, 'reencoder = SentenceTransformer(configs["reencoder"])'),
            _c("configs/causallm_opt-350m-qa.json", 5, None, '"reencoder": "average_word_embeddings_komninos"'),
            _c("configs/maskedlm_roberta-large-qa.json", 5, None, '"reencoder": "average_word_embeddings_komninos"'),
            _c("configs/causallm_opt-350m-e5-large-v2-qa.json", 5, None, '"reencoder": "intfloat/e5-large-v2"'),
        ),
        description=("authors: each run's config names its re-encoder, average_word_embeddings_komninos for "
                     "the OPT and RoBERTa runs and e5-large-v2 only for runs named with it, so a re-encode "
                     "number is compared only with a run of the same re-encoder; e5-large-v2: every run "
                     "re-encodes with e5-large-v2."),
        moves=("modes", "filtering"),
    ),
    Switch(
        key="recipes.<recipe>.epochs",
        values=(3, 1),
        authors=3,
        ours=1,
        follows=(
            _c(_TRAIN_SH, 46, None, "--num_train_epochs 3"),
            _c(_TRAIN_SH, 67, None, "--num_train_epochs 1"),
        ),
        description=("authors: the Alpaca baselines were fine-tuned for 3 epochs and the InBedder models for 1; "
                     "1: every recipe trains for the model's `train.epochs` (or its step budget)."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="method.train_answer_cut",
        values=("authors", "quarter"),
        authors="authors",
        ours="quarter",
        follows=(
            _c(_TRAIN, 185, 192, "if len(ist_toks + inp_toks + res_toks) > tokenizer.model_max_length - num_extra_tokens:"),
            _c(_TRAIN, 116, 123, "truncation=True"),
        ),
        description=("authors: a training answer is cut only when instruction, input and answer together pass "
                     "the model length less 20 tokens and the answer is the longest of the three; quarter: "
                     "every answer is cut to max_length // 4 tokens."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="models.<model>.decoding",
        values=("authors", "greedy"),
        authors="authors",
        ours="greedy",
        follows=(
            _c("configs/causallm_llama-2-7b-qa-ml=3.json", 10, 15, '"temperature": 0.6'),
            _c("configs/causallm_opt-350m-qa.json", 9, 13, '"do_sample": false'),
            _c("evaluation.py", 30, None, "set_seed(configs['seed'])"),
        ),
        description=("authors: Llama-2 answers were sampled (temperature 0.6, top_p 0.9) and OPT and T5 answers "
                     "decoded greedily, under seed 42; greedy: every model decodes greedily."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="method.re_encode_multi_sampling",
        values=("authors", "temperature"),
        authors="authors",
        ours="temperature",
        follows=(
            _c("configs/causallm_llama-2-7b-e5-large-v2-qa-ml=3-multiple.json", 10, 17, '"top_p": 0.9'),
            _c("lm_encoders_hf/causallm_reencode_multiple.py", 186, 201, "for _ in range(self.reencode_times):"),
        ),
        description=("authors: the 10 answers of the multi-sample re-encode are drawn at temperature 0.8 with "
                     "top_p 0.9 and their embeddings averaged; temperature: drawn at temperature 0.8 from the "
                     "full distribution."),
        moves=("modes",),
    ),
    Switch(
        key="method.train_target",
        values=("authors", "space"),
        authors="authors",
        ours="space",
        follows=(
            _c(_TRAIN, 148, None, "examples = [s + t for s, t in zip(sources, targets)]"),
            _c(_TRAIN, 156, None, "outputs = [s + t for s, t in zip(sources, targets)]"),
            _c(_TRAIN, 241, None, "targets = [f\"{example['output']}{tokenizer.eos_token}\""),
        ),
        description=("authors: a training example is the prompt, the answer and EOS concatenated as text with "
                     "nothing between `### Response:` and the answer; space: one space separates them."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="models.<model>.dtype",
        values=("authors", "auto"),
        authors="authors",
        ours="auto",
        follows=(
            _c("configs/causallm_opt-350m-qa.json", 7, None, '"dtype": "float32"'),
            _c("configs/maskedlm_roberta-large-qa.json", 7, None, '"dtype": "float32"'),
            _c("configs/causallm_llama-2-7b-qa-ml=3.json", 7, None, '"dtype": "bfloat16"'),
            _c(_CAUSAL, 60, None, "torch_dtype=torch.bfloat16 if dtype == \"bfloat16\" else torch.float32"),
        ),
        description=("authors: OPT, RoBERTa and T5 ran in float32 and Llama-2 in bfloat16; auto: bfloat16 "
                     "on CUDA and float32 on CPU for every model."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="method.masked_prompt_modes",
        values=("authors", "text_only"),
        authors="authors",
        ours="text_only",
        follows=(
            _c(_MASKED, 239, 246, "not_eos = torch.ne(input_ids[batch_id], self.tokenizer.eos_token_id)"),
            _c(_MASKED, 252, None, "all_hs = hs[not_pad, :].mean(0).cpu()"),
        ),
        description=("authors: a masked LM's avg-ppt averages `<s>` and the prompt tokens, and avg-all every "
                     "non-pad position (`<s>`, prompt, masks, `</s>`); text_only: the prompt text tokens, "
                     "and those plus the masks."),
        moves=("modes",),
    ),
    Switch(
        key="method.reranking_map",
        values=("v1", "map_at_1000"),
        authors="v1",
        ours="map_at_1000",
        follows=(
            _c("mteb/evaluation/evaluators/RerankingEvaluator.py", 241, None,
               "ap = average_precision_score(is_relevant, pred_scores)"),
            _c("mteb/evaluation/evaluators/RerankingEvaluator.py", 51, 54, "len(sample[\"positive\"]) > 0"),
            _c("mteb/tasks/Reranking/AskUbuntuDupQuestions.py", 20, None,
               '"revision": "2000358ca161889fa9c082cb41daa8dcfb161a54"'),
        ),
        description=("v1: the authors' reranking MAP, the mean over queries with a positive and a negative of "
                     "scikit-learn's average precision of the candidates' cosine scores (tied scores share one "
                     "threshold); map_at_1000, what every run reports: mteb 2.x's retrieval MAP over the same "
                     "candidate lists, the same number unless two or more tied positives have a negative tied "
                     "with them or above them, and lower then (pytrec_eval breaks ties by document id, "
                     "negatives first)."),
        moves=("generic",),
        configurable=False,
    ),
    # The setting: which weights, which data, which hyper-parameters (each read from the run's config).
    Switch(
        key="models.<model>.variant",
        values=("base", "instruct"),
        authors="base",
        ours="instruct",
        follows=(
            _c(_TRAIN_SH, 13, None,
               '"roberta-large" "facebook/opt-350m" "google/flan-t5-large" "facebook/opt-1.3b"'),
            _c("configs/causallm_llama-2-7b-qa-ml=3.json", 3, None, "qa_Llama-2-7b-hf"),
        ),
        description=("authors: InBedder and the Alpaca baselines were fine-tuned from base models "
                     "(RoBERTa-large, OPT, Llama-2-7b-hf; only the seq2seq flan-t5 is instruction-tuned); "
                     "instruct: the model is a chat or instruction-tuned release (models.<model>.variant.instruct), so its "
                     "untuned row already answers questions."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="models.<model>.source",
        values=("hub", "gguf"),
        authors="hub",
        ours="gguf",
        follows=(
            _c(_CAUSAL, 59, 60, "AutoModelForCausalLM.from_pretrained(model_name_or_path"),
            _c("configs/causallm_opt-350m-qa.json", 7, None, '"dtype": "float32"'),
        ),
        description=("authors: full-precision checkpoints from the Hugging Face hub; gguf: a packaged GGUF "
                     "file quantised to about 4 bits a weight (models.<model>.variant.quantisation), dequantised "
                     "to float32 before training and encoding, so every weight carries the rounding."),
        moves=PAPER_TABLES,
    ),
    Switch(
        key="recipes.<recipe>.dataset",
        values=("authors", "subset"),
        authors="authors",
        ours="subset",
        follows=(
            _c(_TRAIN_SH, 44, None, '--data_path "data/alpaca_data_processed.json"'),
            _c(_TRAIN_SH, 65, None, '--data_path "data/qa_collection_processed.json"'),
        ),
        description=("authors: InBedder was fine-tuned on their QA collection (about 198k rows) and the "
                     "Alpaca baselines on the 52k Alpaca rows; subset: another table (the C3 QA analog, a 5,000-row "
                     "Alpaca sample) or part of one (limits.train_rows, or a step budget that ends before "
                     "an epoch)."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="models.<model>.train.learning_rate",
        values=(2e-5, 1e-4),
        authors=2e-5,
        ours=1e-4,
        follows=(
            _c(_TRAIN_SH, 24, 27, "learning_rate=1e-4"),
            _c(_TRAIN_SH, 29, 36, "learning_rate=2e-5"),
        ),
        description=("authors: a peak learning rate of 2e-5, and 1e-4 for T5; 1e-4: the packaged models' "
                     "short CPU recipe."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="models.<model>.train.lr_scheduler",
        values=("cosine", "constant_with_warmup"),
        authors="cosine",
        ours="constant_with_warmup",
        follows=(
            _c(_TRAIN_SH, 76, None, "--warmup_ratio 0.03"),
            _c(_TRAIN_SH, 77, None, '--lr_scheduler_type "cosine"'),
        ),
        description=("authors: a linear warm-up over the first 3% of the steps, then a cosine decay to 0; "
                     "constant_with_warmup: the same warm-up, then a constant rate."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="models.<model>.train.batch_size",
        values=(64, 8),
        authors=64,
        ours=8,
        follows=(
            _c(_TRAIN_SH, 24, 36, "gradient_accumulation_steps=4"),
            _c(_TRAIN_SH, 68, 69, "--gradient_accumulation_steps $gradient_accumulation_steps"),
        ),
        description=("authors: 64 rows an optimizer step on one GPU (16 x 4 or 8 x 8 accumulated); 8: "
                     "train.batch_size x train.grad_accum of the packaged models' recipe."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
    Switch(
        key="models.<model>.train.max_length",
        values=(512, 256),
        authors=512,
        ours=256,
        follows=(_c(_TRAIN, 85, 86, "default=512"),),
        description=("authors: a training row is cut at 512 tokens (model_max_length); 256: the packaged "
                     "models' recipe cuts at 256, which shortens long passages and answers."),
        moves=("instruction_awareness", "generic", "modes"),
    ),
)


def switch(key: str) -> Switch:
    """The switch of a config key; KeyError naming the known keys otherwise."""
    for s in SWITCHES:
        if s.key == key:
            return s
    raise KeyError(f"no fidelity switch {key!r}; known: {', '.join(s.key for s in SWITCHES)}")


@cache
def authors_stopwords() -> tuple[str, ...]:
    """NLTK's English stopword list (179 words, in its order), the list the authors' filter used."""
    path = resources.files("inbedder") / "data" / STOPWORDS_FILE
    words = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines()
                  if line.strip() and not line.startswith("#"))
    if len(words) != STOPWORDS_COUNT or len(set(words)) != len(words):
        raise ValueError(f"{path}: {len(words)} words ({len(set(words))} distinct), expected {STOPWORDS_COUNT}")
    return words


METHOD_PREFIX = "method."


def method_settings(config: dict[str, Any] | None) -> dict[str, str]:
    """The `method` block of a config, each value checked; a block that did not pass the schema (a cache's
    meta, a test) gets the authors' value for a key it lacks.

    A deviation no config selects (`configurable` False) is not a key of the block."""
    given = dict((config or {}).get("method") or {})
    out: dict[str, str] = {}
    for s in SWITCHES:
        if not s.key.startswith(METHOD_PREFIX) or not s.configurable:
            continue
        name = s.key[len(METHOD_PREFIX):]
        value = given.pop(name, s.authors)
        if value not in s.values:
            raise ValueError(f"{s.key}: {value!r} is not one of {', '.join(map(repr, s.values))}")
        out[name] = value
    if given:
        raise ValueError(f"method: unknown key(s) {sorted(given)}; known: {sorted(out)}")
    return out


# The re-encoders of the authors' runs (each config's `reencoder`), by the name paper_numbers.csv gives them.
AUTHORS_RE_ENCODERS: dict[str, str] = {
    "komninos": "sentence-transformers/average_word_embeddings_komninos",
    "e5-large-v2": "intfloat/e5-large-v2",
}
# Epochs of the authors' recipes (alpaca_train/scripts/train.sh:46, 67).
AUTHORS_EPOCHS: dict[str, int] = {"alpaca": 3, "inbedder": 1}
# The authors' warm-up (alpaca_train/scripts/train.sh:76), the learning rate of their T5 runs (line 27), and
# their training data per recipe: this project's table of the same data and its size (DESIGN section 2).
AUTHORS_WARMUP = 0.03
AUTHORS_SEQ2SEQ_LR = 1e-4
AUTHORS_TRAIN_DATA: dict[str, tuple[str, str]] = {
    "inbedder": ("inbedder_qa", "their QA collection, ~198k rows"),
    "alpaca": ("alpaca", "Alpaca, 52k rows"),
}
