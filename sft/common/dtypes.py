"""Weight dtypes by name, the one way export and evaluation choose them (imported; not a command).

    DTYPES                               # the choices of every --dtype flag: auto, float32, bfloat16, float16
    config_dtype({"dtype": "bfloat16"})  # "bfloat16": what a model's config.json declares
    torch_dtype("auto", config)          # torch.bfloat16: a --dtype value as a torch dtype
"""

from __future__ import annotations

from typing import Any

DTYPES = ("auto", "float32", "bfloat16", "float16")
"""`auto` (the model config's dtype), then the dtypes a model may be stored or run in."""


def config_dtype(config: dict[str, Any]) -> str:
    """The dtype a Hugging Face config declares (`dtype`, or the older `torch_dtype`).

    float32 when it declares none, or one outside DTYPES (say "float64"): keep what training used.
    """
    name = config.get("dtype") or config.get("torch_dtype") or "float32"
    return name if name in DTYPES[1:] else "float32"


def torch_dtype(name: str, config: dict[str, Any]):
    """`name` (one of DTYPES) as a torch dtype; `auto` is the dtype `config` declares."""
    import torch

    return getattr(torch, config_dtype(config) if name == "auto" else name)
