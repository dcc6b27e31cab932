"""Every option of sft/prepare_data.py, declared once (imported; not a command).

Each option is one field of `PrepareConfig`: its name, default and type, and in the field's
metadata its --help text and group. From that one declaration come the command line
(`add_arguments`, `config_from_args`), the manifest's `config` (dataclasses.asdict), and what
the scan's worker processes read (they receive the PrepareConfig itself, inside
sft.dataprep.scan.ScanSettings). A new option is one field here (plus a check in
`__post_init__` if it needs one) and the code that uses it.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Any

import orjson

from sft.dataprep.jsonl_io import DEFAULT_CHUNK_BYTES, InputError

TASK_BYTES = 32 << 20
"""Input per scan task (--task-mb 0): line-aligned byte ranges of about this size."""
HEAVY_TASK_BYTES = 512 << 10
"""Task size when every row is graded (--answer-key/--answers): milliseconds a row, so more, smaller tasks."""

SPLIT = "split and shuffle"
FIELDS = "fields"
CHAT = "chat template and reasoning"
FILTERS = "quality filters (all off by default; every drop is counted)"
TOKENS = "token budget"
RUN = "errors and progress"


def option(default, group: str, help: str, *, metavar: str | None = None, choices: list[str] | None = None,
           negated_flag: str | None = None, repeatable: bool = False):
    """A PrepareConfig field with its command-line form. `negated_flag`: a bool that defaults to True is
    turned off by this flag (--no-progress); `repeatable`: the flag may be given several times, the field
    gets the list of values."""
    return field(default=default, metadata={"group": group, "help": help, "metavar": metavar, "choices": choices,
                                            "negated_flag": negated_flag, "repeatable": repeatable})


@dataclass
class PrepareConfig:
    """Every option of prepare_data; the CLI flags map one to one (see --help), in --help's order."""

    # -- split and shuffle
    val_split: float = option(0.1, SPLIT, "fraction of problems (not rows) held out for validation; 0 writes no val.parquet")
    seed: int = option(0, SPLIT, "seed of the split and of the shuffle")
    group_by: str = option("id", SPLIT, "what makes rows one problem for the split and --max-per-problem: the id field "
                           "(the prompt text for rows without one), or always the prompt text", choices=["id", "prompt"])
    shuffle_buffer_mb: float = option(128.0, SPLIT, "input per shuffle bucket, in MiB: each bucket is held in memory once "
                                      "while it is written")
    # -- fields
    prompt_key: str | None = option(None, FIELDS, "field with the problem text (user message). Unset: 'prompt', and a "
                                    "row holding a conversation ('messages' or 'conversations') trains that instead; "
                                    "set (or --response-key or --prompt-template set): every row is read from these "
                                    "fields, whatever else it holds")
    response_key: str | None = option(None, FIELDS, "field with the solution (assistant message): a string, or a list "
                                      "of solutions (strings, or objects with 'text', 'content' or 'message') that "
                                      "gives one sample per element. Unset: 'generated_solution' (see --prompt-key)")
    prompt_template: str | None = option(None, FIELDS, "build the prompt from several fields, e.g. "
                                         "'{instruction}\\n\\n{input}' (Alpaca): each {field} is that field of the "
                                         "row (missing: a reject; null or empty: nothing), \\n a newline; the result "
                                         "is stripped. Instead of --prompt-key", metavar="TEMPLATE")
    reasoning_key: str | None = option(None, FIELDS, "field with the reply's reasoning on flat rows (e.g. s1K's "
                                       "deepseek_thinking_trajectory), joined into the reply as on conversation rows' "
                                       "reasoning_content; a list beside a list of replies goes element by element. "
                                       "Unset: 'reasoning_content', 'reasoning' or 'thinking' when a row has one")
    id_key: str = option("id", FIELDS, "field with the problem id")
    system_prompt: str | None = option(None, FIELDS, "system message to put first in every sample that has none "
                                       "(unset: none)")
    system_key: str | None = option("system", FIELDS, "field with a row's own system message (ShareGPT's and "
                                    "LLaMA-Factory's top-level 'system'); it wins over --system-prompt. '' = none")
    messages_key: str | None = option(None, FIELDS, "field of rows that are whole conversations: a list of {role, "
                                      "content[, reasoning_content, tool_calls]} or ShareGPT's {from, value}; every "
                                      "assistant turn is trained. Unset: 'messages' or 'conversations' where a row has "
                                      "one; set: every row must have it (unless --prompt-key/--response-key are set too)")
    tools_key: str | None = option(None, FIELDS, "field of conversation rows with the tools list the prompt offers: "
                                   "function schemas ({name, description, parameters}, or OpenAI's {type: function, "
                                   "function: {...}}), or their JSON text as LLaMA-Factory writes it; passed to the "
                                   "chat template as tools=[...] and written to the output's 'tools' column. Unset: "
                                   "'tools' where a row has one; '' = none")
    sample_filter: list[str] | None = option(None, FIELDS, "keep only the samples whose FIELD is true: a list of "
                                             "booleans beside a list of replies (OpenR1's correctness_math_verify), a "
                                             "field of each reply object, or of the row; others are dropped as "
                                             "failed_sample_filter (repeatable: all must be true)", metavar="FIELD",
                                             repeatable=True)
    keep_truncated: bool = option(False, FIELDS, "keep replies whose finish_reason/stop_reason says the length limit "
                                  "cut them ('length', 'max_tokens'); default: dropped, counted as truncated")
    # -- chat template and reasoning
    answers_only: bool = option(False, CHAT, "remove the reasoning (everything up to the closing tag of --reasoning-tags) "
                                "from every reply and train on the answers only; default: the reasoning is trained, "
                                "whatever the template does with it")
    reasoning_tags: str = option("<think>,</think>", CHAT, "the tags that delimit reasoning in replies", metavar="OPEN,CLOSE")
    chat_template_kwargs: dict | None = option(None, CHAT, "extra variables for the chat template, recorded for training "
                                               "too, e.g. '{\"enable_thinking\": false}' for Qwen3 replies without "
                                               "reasoning", metavar="JSON")
    """A JSON object; given as text (the command line), it is parsed by __post_init__."""
    # -- quality filters
    dedup: bool = option(False, FILTERS, "drop exact duplicate (prompt, response) pairs after whitespace normalisation; "
                         "the first is kept")
    require_final_answer: bool = option(False, FILTERS, "drop solutions that state no final answer in a standard form "
                                        "(\\boxed{...}, 'the answer is ...', '#### ...'): a format check, not a "
                                        "correctness one")
    answer_key: str | None = option(None, FILTERS, "field holding the reference answer (bare or a full solution); keeps "
                                    "only solutions whose conclusion is that answer (math-verify equivalence); dropped "
                                    "rows go to answer_drops.jsonl")
    answers: str | None = option(None, FILTERS, "reference answers by id: .json {id: answer} or .jsonl rows with the id "
                                 "field and 'answer'; keeps only correct solutions (math-verify)", metavar="FILE")
    strict_grading: bool = option(False, FILTERS, "with --answer-key/--answers: grade only answers stated in a standard "
                                  "form (\\boxed{...}, 'the answer is ...', '#### ...'); default: the solution's "
                                  "conclusion wherever it states it (an 'Answer:' line, bold, a closing equation, "
                                  "'Therefore, there are 12 ...')")
    max_per_problem: int | None = option(None, FILTERS, "keep at most K solutions per problem (the first K in input order)",
                                         metavar="K")
    min_tokens: int | None = option(None, FILTERS, "drop samples with fewer tokens (with --tokenizer: the chat-templated "
                                    "count training sees; without: the --num-tokens-key field)")
    max_tokens: int | None = option(None, FILTERS, "drop samples with more tokens (same count as --min-tokens)")
    num_tokens_key: str = option("num_tokens", FILTERS, "field with a token count, used by --min/--max-tokens when there "
                                 "is no --tokenizer")
    filters_for: list[str] | None = option(None, FILTERS, "apply the filters above (--dedup, --require-final-answer, "
                                           "--answer-key/--answers, --max-per-problem, --min/--max-tokens) only to "
                                           "the rows of these sources (--source NAME; repeatable or comma-separated); "
                                           "rows of the others are used as given: still validated, and still dropped "
                                           "by --max-length and by --answers-only when no answer is left. Unset: "
                                           "every source", metavar="NAME[,NAME...]", repeatable=True)
    """Source names, normalised by __post_init__ (commas split, each name once, in order); None: every source.
    The names are checked against the run's sources by sft.dataprep.sources.resolve_sources."""
    # -- token budget
    tokenizer: str | None = option(None, TOKENS, "the model's tokenizer (local directory or Hugging Face id): encode every "
                                   "sample through its chat template exactly as training will, count its tokens, refuse "
                                   "rows the template refuses, show what is trained, recommend MAX_LENGTH and "
                                   "MAX_TOKENS_PER_GPU", metavar="PATH_OR_ID")
    max_length: int | None = option(None, TOKENS, "verl's data.max_length in tokens: longer samples are dropped (counted "
                                    "as over_max_length) so training with truncation=error never stops on one (needs "
                                    "--tokenizer)")
    # -- errors and progress
    on_error: str = option("fail", RUN, "bad row: fail = stop at the first with file, line and reason; skip = set it "
                           "aside in rejects.jsonl", choices=["fail", "skip"])
    workers: int = option(0, RUN, "processes that parse and filter rows (0 = one per CPU core); the output does not "
                          "depend on it")
    compression: str = option("snappy", RUN, "Parquet compression of the outputs",
                              choices=["snappy", "zstd", "lz4", "gzip", "none"])
    chunk_mb: float = option(DEFAULT_CHUNK_BYTES / (1 << 20), RUN, "input parsed per step, in MiB")
    task_mb: float = option(0.0, RUN, "input per worker task, in MiB (0 = 32, or 0.5 with --answer-key/--answers, whose "
                            "grading is slower per row); changes the shuffle order, like --shuffle-buffer-mb")
    """0 = auto: 32 MiB, or 0.5 MiB with --answer-key/--answers (grading costs milliseconds a row, so
    smaller tasks keep every worker busy on inputs of a few tens of MiB)."""
    progress: bool = option(True, RUN, "no progress bars", negated_flag="--no-progress")

    def __post_init__(self) -> None:
        if not 0.0 <= self.val_split < 1.0:
            raise InputError(f"--val-split must be in [0, 1), got {self.val_split}")
        if self.on_error not in ("fail", "skip"):
            raise InputError(f"--on-error must be 'fail' or 'skip', got {self.on_error!r}")
        if self.group_by not in ("id", "prompt"):
            raise InputError(f"--group-by must be 'id' or 'prompt', got {self.group_by!r}")
        if self.prompt_field == self.response_field:
            raise InputError(f"--prompt-key and --response-key are both {self.prompt_field!r}")
        if self.prompt_template is not None:
            self._check_template()
        for name in ("max_per_problem", "min_tokens", "max_tokens", "max_length"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.min_tokens and self.max_tokens and self.min_tokens > self.max_tokens:
            raise InputError(f"--min-tokens {self.min_tokens} is above --max-tokens {self.max_tokens}")
        if self.max_length is not None and self.tokenizer is None:
            raise InputError(
                "--max-length needs --tokenizer: the limit applies to the tokens training sees through the chat template"
            )
        if self.strict_grading and not (self.answer_key or self.answers):
            raise InputError("--strict-grading needs --answer-key or --answers: it chooses how correctness is graded")
        if self.answer_key and self.answers:
            raise InputError("use either --answer-key (a field of each row) or --answers FILE, not both")
        if min(self.shuffle_buffer_mb, self.chunk_mb) <= 0 or self.task_mb < 0:
            raise InputError("--shuffle-buffer-mb and --chunk-mb must be positive, --task-mb positive or 0 (auto)")
        if self.workers < 0:
            raise InputError(f"--workers must be 0 (one per core) or more, got {self.workers}")
        if self.compression not in ("snappy", "zstd", "lz4", "gzip", "none"):
            raise InputError(f"--compression must be snappy, zstd, lz4, gzip or none, got {self.compression!r}")
        tags = self.reasoning_tags.split(",")
        if len(tags) != 2 or not all(t.strip() for t in tags):
            raise InputError(f"--reasoning-tags must be OPEN,CLOSE (two non-empty tags), got {self.reasoning_tags!r}")
        if isinstance(self.chat_template_kwargs, str):
            try:
                self.chat_template_kwargs = orjson.loads(self.chat_template_kwargs)
            except orjson.JSONDecodeError as exc:
                raise InputError(f"--chat-template-kwargs must be a JSON object, e.g. '{{\"enable_thinking\": false}}': "
                                 f"{exc}") from None
        if self.chat_template_kwargs is not None and not isinstance(self.chat_template_kwargs, dict):
            raise InputError("--chat-template-kwargs must be a JSON object, e.g. '{\"enable_thinking\": false}'")
        if self.chat_template_kwargs and "add_generation_prompt" in self.chat_template_kwargs:
            raise InputError("--chat-template-kwargs cannot set add_generation_prompt: every trained turn's prompt is "
                             "rendered with it on (the inference prompt), the conversation with it off")
        if self.messages_key is not None and self.messages_key in (self.prompt_field, self.response_field):
            raise InputError(f"--messages-key {self.messages_key!r} is also --prompt-key or --response-key")
        if self.sample_filter is not None:
            self.sample_filter = [name for text in ([self.sample_filter] if isinstance(self.sample_filter, str)
                                                    else self.sample_filter) for name in str(text).split(",") if name]
        if self.filters_for is not None:
            self.filters_for = _source_names(self.filters_for)

    def _check_template(self) -> None:
        from sft.dataprep.layouts import template_fields, unescape

        if self.prompt_key is not None:
            raise InputError("use either --prompt-key (one field) or --prompt-template (several), not both")
        try:
            names = template_fields(unescape(self.prompt_template))
        except ValueError as exc:
            raise InputError(f"--prompt-template {self.prompt_template!r}: {exc}") from None
        if not names:
            raise InputError(f"--prompt-template {self.prompt_template!r} names no field; write e.g. "
                             "'{instruction}\\n\\n{input}'")

    @property
    def prompt_field(self) -> str:
        """The prompt's field of flat rows (--prompt-key, default 'prompt')."""
        return self.prompt_key or "prompt"

    @property
    def response_field(self) -> str:
        """The reply's field of flat rows (--response-key, default 'generated_solution')."""
        return self.response_key or "generated_solution"

    @property
    def quality_filters(self) -> list[str]:
        """The quality filters that are on, as flags (what --filters-for restricts)."""
        on = {"--dedup": self.dedup, "--require-final-answer": self.require_final_answer,
              "--answer-key": self.answer_key, "--answers": self.answers, "--max-per-problem": self.max_per_problem,
              "--min-tokens": self.min_tokens, "--max-tokens": self.max_tokens}
        return [flag for flag, value in on.items() if value]

    @property
    def check_answers(self) -> bool:
        return bool(self.answer_key or self.answers)

    @property
    def task_bytes(self) -> int:
        if self.task_mb:
            return int(self.task_mb * (1 << 20))
        return HEAVY_TASK_BYTES if self.check_answers else TASK_BYTES

    @property
    def tags(self) -> tuple[str, str]:
        opening, closing = (t.strip() for t in self.reasoning_tags.split(","))
        return opening, closing

    def chat_options(self) -> dict:
        """ChatFormat keyword arguments (what training must use too)."""
        return {"template_kwargs": self.chat_template_kwargs or {}, "reasoning_tags": self.tags}

    @property
    def chunk_bytes(self) -> int:
        return int(self.chunk_mb * (1 << 20))


def _source_names(value: str | list[str] | tuple[str, ...]) -> list[str]:
    """--filters-for's names: each value split at commas, each name once, in order."""
    values = [value] if isinstance(value, str) else list(value)
    names = [name.strip() for text in values for name in str(text).split(",")]
    if not names or not all(names):
        raise InputError(f"--filters-for {','.join(map(str, values))!r} has an empty source name: write e.g. "
                         "--filters-for self or --filters-for self,other")
    return list(dict.fromkeys(names))


_TYPES = {"int": int, "float": float}
"""Command-line value types by the field's annotation (the part before `| None`); others are text."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One command-line option per PrepareConfig field, in argument groups, in field order."""
    defaults = PrepareConfig()
    groups: dict[str, Any] = {}
    for spec in fields(PrepareConfig):
        meta = spec.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        group = groups[meta["group"]]
        if meta["negated_flag"]:
            group.add_argument(meta["negated_flag"], action="store_true", help=meta["help"])
            continue
        flag = "--" + spec.name.replace("_", "-")
        if spec.type == "bool":
            group.add_argument(flag, action="store_true", help=meta["help"])
            continue
        extra = {key: meta[key] for key in ("metavar", "choices") if meta[key] is not None}
        if meta["repeatable"]:
            extra["action"] = "append"
        value_type = _TYPES.get(spec.type.split("|")[0].strip())
        if value_type is not None:
            extra["type"] = value_type
        group.add_argument(flag, default=getattr(defaults, spec.name), help=meta["help"], **extra)


def _dest(spec) -> str:
    flag = spec.metadata["negated_flag"]
    return flag.lstrip("-").replace("-", "_") if flag else spec.name


def config_from_args(args: argparse.Namespace) -> PrepareConfig:
    """The PrepareConfig of parsed arguments (add_arguments' options)."""
    values = {}
    for spec in fields(PrepareConfig):
        value = getattr(args, _dest(spec))
        values[spec.name] = not value if spec.metadata["negated_flag"] else value
    return PrepareConfig(**values)
