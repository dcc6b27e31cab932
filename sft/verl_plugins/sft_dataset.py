"""verl's SFT dataset built with sft/text/chat_format.py: training sees the tokens prepare_data counted.

Loaded by verl through its own extension point; the launchers pass
    data.custom_cls.path=<repo>/sft/verl_plugins/sft_dataset.py data.custom_cls.name=ChatTemplateSFTDataset

It replaces verl 0.9.1's MultiTurnSFTDataset, which renders every message on its own and
concatenates the pieces: right for Qwen2.5-style templates, wrong for templates whose output
depends on context (Qwen3, DeepSeek-R1 distills, QwQ, Gemma, Mistral, Phi-3.5; see
sft/text/chat_format.py). Each row's `messages` are encoded by `ChatFormat.encode`, the function
prepare_data's `--tokenizer` counts with, so `sft_num_tokens` is each item's length by
construction. The template settings prepare_data recorded in the Parquet file (its
`verl_sft` schema metadata: template kwargs, reasoning tags, text encoder, the stop token trained
after replies the template closes with no special token) are used, and the template's reasoning
mechanism (sft/text/reasoning_format.py), found again here, must be the recorded one; a
`data.apply_chat_template_kwargs` that contradicts them is refused. Items are what verl's
trainer expects from its own dataset: `input_ids`, `position_ids`, `loss_mask` (and
`attention_mask` with `data.pad_mode=right`); `data.max_length`, `data.truncation` and
`data.max_samples` behave as in verl, except that a truncated sample is reported loudly.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # loaded by file path (verl's load_extern_object): make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sft.text.chat_format import ChatFormat, ConversationError, TemplateError
from sft.text.chat_format import read_encoding_record as read_encoding_metadata
from sft.text.chat_tokens import TEXT_ENCODER_TIKTOKEN
from sft.text.tool_format import from_stored

TOOLS_COLUMN = "tools"
"""prepare_data's column with each row's tools list as JSON text (sft.dataprep.write.TOOLS_OUTPUT_COLUMN)."""


def _has_tool_messages(schema, messages_key: str) -> bool:
    """Whether prepare_data wrote this file from tool conversations: its messages carry `tool_calls` and its
    `tools` column is their tools list (sft.dataprep.write.TOOL_MESSAGES_TYPE). Elsewhere a `tools` column is
    a field of the user's rows, never passed to the template."""
    import pyarrow as pa

    kind = schema.field(messages_key).type
    return (TOOLS_COLUMN in schema.names and pa.types.is_list(kind) and pa.types.is_struct(kind.value_type)
            and kind.value_type.get_field_index("tool_calls") >= 0)


def _plain(value):
    """OmegaConf containers to plain Python."""
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(value):
            return OmegaConf.to_container(value, resolve=True)
    except ImportError:  # pragma: no cover - verl depends on omegaconf
        pass
    return value


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


class ChatTemplateSFTDataset:
    """Rows of `messages` to training items through the model's chat template (module docstring).

    A map-style dataset (`len` and indexing), which is what torch's DataLoader and verl's trainer use;
    it is not a subclass of torch's Dataset so that loading this file does not import torch: the
    launcher loads it before torchrun starts, and torch's import alone takes about 2 s on a CPU.
    """

    @staticmethod
    def check_config(config, files: list[str]) -> tuple[dict, dict | None]:
        """(template kwargs to encode with, the files' encoding record): what the files were prepared with.

        Raises ValueError when the files disagree, or when data.apply_chat_template_kwargs asks for other
        template settings. `add_generation_prompt: false` (written by verl's older examples) is what every
        whole conversation is rendered with anyway, so it is accepted and changes nothing. The launcher
        calls this before torchrun starts, so the message comes in seconds, not from every rank.
        """
        records = [read_encoding_metadata(path) for path in files]
        recorded = next((r for r in records if r), None)
        if any(r != recorded for r in records if r):
            raise ValueError(f"the files {files} were prepared with different chat template settings; prepare them "
                             "in one prepare_data run")
        asked = dict(_plain(config.get("apply_chat_template_kwargs", {})) or {})
        if asked.get("add_generation_prompt") is False:
            del asked["add_generation_prompt"]
        elif "add_generation_prompt" in asked:
            raise ValueError(
                f"data.apply_chat_template_kwargs has add_generation_prompt={asked['add_generation_prompt']}: each "
                "trained reply follows the prompt rendered with add_generation_prompt=True, and the whole conversation "
                "is rendered with it off; a generation prompt after the reply is never trained. Drop it")
        if not recorded:
            return asked, None
        kept = recorded.get("template_kwargs") or {}
        if asked and asked != kept:
            raise ValueError(
                f"data.apply_chat_template_kwargs={asked} but {files[0]} was prepared with {kept or 'none'}: token "
                "counts, length filters and MAX_LENGTH were computed with those. Re-run sft/prepare_data.py with "
                f"--chat-template-kwargs '{json.dumps(asked)}', or drop the override")
        return dict(kept), recorded

    @staticmethod
    def chat_format(tokenizer, kwargs: dict, recorded: dict | None, where: str) -> ChatFormat:
        """The ChatFormat that encodes as prepare_data counted: its reasoning tags, text encoder and stop
        token from the record; the template's reasoning mechanism, found again here, must be the recorded one."""
        options: dict = {}
        if recorded:
            if recorded.get("reasoning_tags"):
                options["reasoning_tags"] = recorded["reasoning_tags"]
            if recorded.get("text_encoder") not in (None, TEXT_ENCODER_TIKTOKEN):
                options["use_tiktoken"] = False
            if recorded.get("stop_token"):
                options["stop_token"] = recorded["stop_token"]
        try:
            chat = ChatFormat(tokenizer, template_kwargs=kwargs, name=getattr(tokenizer, "name_or_path", None),
                              **options)
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        for key, found in (("reasoning_format", chat.reasoning.describe()), ("render_defaults", chat.render_defaults)):
            if recorded and key in recorded and recorded[key] != found:
                raise ValueError(f"{where} was prepared with the chat template's {key.replace('_', ' ')} "
                                 f"{recorded[key]}, but the tokenizer training loads gives {found}: the token counts and the trained "
                                 "format would differ. Prepare the data again with the model's tokenizer "
                                 "(sft/prepare_data.py --tokenizer MODEL)")
        return chat

    def __init__(self, parquet_files, tokenizer, config=None, processor=None, max_samples: int = -1):
        import numpy as np
        import pyarrow as pa
        import pyarrow.parquet as pq

        config = config or {}
        self.pad_mode = config.get("pad_mode", "right")
        if self.pad_mode not in ("right", "no_padding"):
            raise ValueError(f"data.pad_mode must be right or no_padding, got {self.pad_mode!r}")
        self.truncation = config.get("truncation", "error")
        if self.truncation not in ("error", "left", "right"):
            raise ValueError(f"data.truncation must be error, left or right, got {self.truncation!r}")
        self.max_length = int(config.get("max_length", 1024))
        self.messages_key = config.get("messages_key", "messages")
        self.tokenizer = tokenizer
        files = [str(p) for p in (parquet_files if isinstance(parquet_files, (list, tuple)) else
                                  list(parquet_files) if not isinstance(parquet_files, str) else [parquet_files])]
        if not files:
            raise ValueError("no Parquet files given")
        self.files = files
        kwargs, recorded = self.check_config(config, files)
        self.chat = self.chat_format(tokenizer, kwargs, recorded, files[0])

        tables = []
        for path in files:
            schema = pq.read_schema(path)
            if self.messages_key not in schema.names:
                raise ValueError(f"{path} has no {self.messages_key!r} column (columns: {', '.join(schema.names)}); "
                                 "run sft/prepare_data.py on your JSONL")
            columns = [self.messages_key] + ([TOOLS_COLUMN] if _has_tool_messages(schema, self.messages_key) else [])
            tables.append(pq.read_table(path, columns=columns))
        table = pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]
        column = table.column(self.messages_key)
        tools = table.column(TOOLS_COLUMN) if TOOLS_COLUMN in table.column_names else None
        total = len(column)
        indices = None
        if 0 < max_samples < total:
            if config.get("shuffle", False):
                seed = config.get("seed")
                rng = np.random.default_rng(*((seed,) if seed is not None else ()))
                indices = rng.choice(total, size=max_samples, replace=False)
            else:
                indices = np.arange(max_samples)
            column = column.take(pa.array(indices))
            tools = tools.take(pa.array(indices)) if tools is not None else None
        self.tools = tools.combine_chunks() if tools is not None else None
        self.messages = column.combine_chunks() if column.num_chunks > 1 else column.chunk(0) if column.num_chunks else column
        self.source_rows = indices
        self._warned_truncation = False
        if _rank() == 0:
            self._report(total)

    def _report(self, total: int) -> None:
        described = self.chat.describe()
        name = ", ".join(Path(p).name for p in self.files)
        lines = [f"[verl-sft] dataset {name}: {len(self)} of {total} rows; chat template of {described['tokenizer']} "
                 f"(generation prompt {described['generation_prompt']!r}, end of turn {described['end_of_turn']!r}"
                 + (f", template kwargs {described['template_kwargs']}" if described["template_kwargs"] else "") + ")"]
        if len(self):
            try:
                lines.append("[verl-sft] first sample (context: loss off, trained: loss on):")
                messages, tools = self._row(0)
                lines.append(self.chat.explain(messages, tools=tools))
            except (TemplateError, ConversationError) as exc:
                lines.append(f"[verl-sft] first sample cannot be encoded: {exc}")
        print("\n".join(lines), flush=True)

    def __len__(self) -> int:
        return len(self.messages)

    def _row(self, item: int) -> tuple[list[dict], list[dict] | None]:
        """The row's messages and the tools list its prompt offers (stored as JSON text by prepare_data)."""
        return from_stored(self.messages[item].as_py(), self.tools[item].as_py() if self.tools is not None else None)

    def _where(self, item: int) -> str:
        row = int(self.source_rows[item]) if self.source_rows is not None else item
        return f"{', '.join(self.files)} row {row}"

    def __getitem__(self, item: int) -> dict:
        try:
            ids, mask = self.chat.encode(*self._row(item))
        except (TemplateError, ConversationError) as exc:
            raise ValueError(f"{self._where(item)}: {exc}") from None
        length = len(ids)
        if length > self.max_length:
            if self.truncation == "error":
                raise ValueError(
                    f"{self._where(item)} has {length} tokens, more than data.max_length={self.max_length}. Use "
                    "MAX_LENGTH=auto with the manifest of sft/prepare_data.py --tokenizer, or drop long samples with "
                    "its --max-length")
            if not self._warned_truncation:
                self._warned_truncation = True
                print(f"[verl-sft] WARNING: {self._where(item)} has {length} tokens and is truncated to "
                      f"data.max_length={self.max_length} (data.truncation={self.truncation}): part of the sample is "
                      "not trained. Further truncations are not reported.", file=sys.stderr, flush=True)
            keep = slice(length - self.max_length, None) if self.truncation == "left" and self.pad_mode == "right" \
                else slice(0, self.max_length)
            ids, mask = ids[keep], mask[keep]
            length = len(ids)
        import torch  # imported by the trainer long before the first item

        input_ids = torch.tensor(ids, dtype=torch.long)
        loss_mask = torch.tensor(mask, dtype=torch.long)
        position_ids = torch.arange(length, dtype=torch.long)
        if self.pad_mode == "no_padding":
            return {"input_ids": input_ids, "position_ids": position_ids, "loss_mask": loss_mask}
        missing = self.max_length - length
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        attention_mask = torch.ones(length, dtype=torch.long)
        if missing > 0:
            input_ids = torch.cat([input_ids, torch.full((missing,), pad_id, dtype=torch.long)])
            loss_mask = torch.cat([loss_mask, torch.zeros(missing, dtype=torch.long)])
            attention_mask = torch.cat([attention_mask, torch.zeros(missing, dtype=torch.long)])
            position_ids = torch.cat([position_ids, torch.zeros(missing, dtype=torch.long)])
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids,
                "loss_mask": loss_mask}
