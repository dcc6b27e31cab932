"""The Parquet files a launch trains on, checked before torchrun (imported by sft/launch/settings.py).

    read_parquet_facts(path, variable)   readable Parquet, a `messages` column of conversations
                                         (role/content strings), at least one row; its rows and run id
    pairing_problem(train, val)          train and val come from one sft/prepare_data.py run

prepare_data records its run in every file it publishes (schema metadata `verl_sft`, field
`run_id`) and in manifest.json beside them (top-level `run_id`). A run killed between publishing
train.parquet and val.parquet, or files copied together by hand, pair a new train with an old val:
verl would validate on another split without a word. Files written before the run id existed
carry none; they are accepted with a note.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from sft.launch.errors import LaunchError

METADATA_KEY = b"verl_sft"  # sft/text/chat_format.py PARQUET_METADATA_KEY (a test keeps them equal)
_PREPARE = "Run sft/prepare_data.py first (it writes train.parquet, val.parquet and manifest.json)."


@dataclass(frozen=True)
class ParquetFacts:
    rows: int
    run_id: str | None  # the prepare_data run that wrote it (None: an older file, or not prepare_data's)


def _messages_problem(message_type) -> str | None:
    """Why an Arrow type is not a list of {role, content} structs of strings, or None."""
    import pyarrow as pa

    if not (pa.types.is_list(message_type) or pa.types.is_large_list(message_type)):
        return f"is {message_type}, not a list of messages"
    item = message_type.value_type
    if not pa.types.is_struct(item):
        return f"holds {item} items, not {{role, content}} messages"
    names = {item.field(i).name: item.field(i).type for i in range(item.num_fields)}
    for name in ("role", "content"):
        if name not in names:
            return f"has messages without a `{name}` field (fields: {', '.join(names)})"
        if not (pa.types.is_string(names[name]) or pa.types.is_large_string(names[name])):
            return f"has a `{name}` of type {names[name]}, not text"
    return None


def _run_id(schema) -> str | None:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    try:
        record = json.loads(raw) if raw else None
    except ValueError:
        return None
    run_id = record.get("run_id") if isinstance(record, dict) else None
    return str(run_id) if run_id else None


def read_parquet_facts(path: Path, variable: str) -> ParquetFacts:
    """Check that `path` is a Parquet file of chat conversations with rows; return its rows and run id."""
    if not path.exists():
        raise LaunchError(f"{variable} not found: {path}. {_PREPARE}")
    if path.is_dir():
        raise LaunchError(f"{variable} is a directory: {path}. Point it at a .parquet file written by sft/prepare_data.py.")
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        schema = parquet.schema_arrow
    except Exception as exc:  # pyarrow raises several types for a non-Parquet or damaged file
        raise LaunchError(f"{variable} is not a readable Parquet file: {path} ({exc}). {_PREPARE}") from None
    if "messages" not in schema.names:
        raise LaunchError(
            f"{variable} has no `messages` column: {path} (columns: {', '.join(schema.names)}). "
            "verl's SFT trainer reads chat messages; run sft/prepare_data.py on your JSONL to add them."
        )
    problem = _messages_problem(schema.field("messages").type)
    if problem:
        raise LaunchError(f"{variable}'s `messages` column {problem}: {path}. Each row must be a conversation, a list "
                          "of {role, content} messages; sft/prepare_data.py writes them from prompt/response fields "
                          "or from a `messages` field.")
    rows = parquet.metadata.num_rows
    if rows == 0:
        fix = ("Use VAL_FILE= (empty) to train without validation, or prepare the data again with a validation "
               "split." if variable == "VAL_FILE" else "Check sft/prepare_data.py's summary (every row was rejected "
               "or filtered: see its rejects.jsonl) and prepare the data again.")
        raise LaunchError(f"{variable} has no rows: {path}. {fix}")
    try:
        next(parquet.iter_batches(batch_size=1, columns=["messages"]))  # the first data pages decode
    except Exception as exc:  # a damaged page: pyarrow's error types vary
        raise LaunchError(f"{variable} is damaged: {path} ({exc}). {_PREPARE}") from None
    return ParquetFacts(rows, _run_id(schema))


def manifest_run_id(path: Path) -> str | None:
    """The run id of the manifest.json beside `path`, or None (no manifest, or an older one)."""
    try:
        run_id = json.loads((path.parent / "manifest.json").read_text(encoding="utf-8")).get("run_id")
    except (OSError, ValueError, AttributeError):
        return None
    return str(run_id) if run_id else None


def pairing_problem(files: dict[str, tuple[Path, ParquetFacts]]) -> tuple[str | None, str | None]:
    """(an error, a note) about {variable: (path, facts)} coming from more than one prepare_data run."""
    fix = ("Run sft/prepare_data.py again (it publishes train.parquet, val.parquet and manifest.json of one run), "
           "or set VAL_FILE to the val.parquet of TRAIN_FILE's run (VAL_FILE= trains without validation).")
    for variable, (path, facts) in files.items():
        manifest = manifest_run_id(path)
        if facts.run_id and manifest and facts.run_id != manifest:
            return (f"{variable} {path} was written by prepare_data run {facts.run_id}, but manifest.json beside it "
                    f"describes run {manifest}: the files of two runs are mixed. {fix}"), None
    ids = {variable: facts.run_id for variable, (_, facts) in files.items()}
    if len(files) == 2 and all(ids.values()) and len(set(ids.values())) == 2:
        return (f"TRAIN_FILE and VAL_FILE come from two prepare_data runs (run {ids['TRAIN_FILE']} and run "
                f"{ids['VAL_FILE']}): validation would measure another split. {fix}"), None
    paths = {variable: path for variable, (path, _) in files.items()}
    if len(files) == 2 and any(ids.values()) and not all(ids.values()) \
            and paths["TRAIN_FILE"].parent == paths["VAL_FILE"].parent:
        older = next(v for v, run_id in ids.items() if not run_id)
        return (f"{older} has no prepare_data run id but the file beside it has one: they come from two runs "
                f"(a newer run was interrupted, or files were mixed). {fix}"), None
    unmarked = [variable for variable, run_id in ids.items() if not run_id]
    if unmarked:
        return None, (f"{' and '.join(unmarked)}: no prepare_data run id (written by an older sft/prepare_data.py), "
                      f"so which run wrote {'them' if len(unmarked) > 1 else 'it'} cannot be checked.")
    return None, None
