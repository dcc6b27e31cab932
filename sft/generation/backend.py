"""The generation backend of sft/evaluate.py and sft/generate.py: a model loaded once, chat prompts in, outputs out.

Imported; not a command. Usage (as a library):
    from sft.generation.backend import Generator, Sampling, GREEDY
    generator = Generator(model_dir, backend="transformers", device="auto", dtype="auto", batch_size=16)
    prompts = generator.prompt_ids([[{"role": "user", "content": "What is 3 + 4?"}]])
    greedy = generator.generate(prompts, GREEDY, max_new_tokens=512)            # one Generation per prompt
    sampled = generator.generate(prompts, Sampling(4, temperature=1.0, seed=0), max_new_tokens=512)

Generation: the model's chat template with the generation prompt, at most `max_new_tokens` new
tokens, stopping at EOS (the generation config's and tokenizer's EOS plus the token that closes an
assistant turn in the chat template). `backend="transformers"` decodes in batches with left padding
on CPU or GPU (`device="auto"`); `backend="vllm"` uses vLLM when it is installed. A `Sampling` says
greedy (temperature 0) or K sampled outputs per prompt (temperature, top-p, seed); each call's random
stream is its own, so outputs depend only on the prompts, the settings and the seed.
Also here: the flags both commands share (add_backend_arguments), the settings check before
anything is loaded (check_setup), and torch's CPU threads for a block (torch_threads).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from sft.common.dtypes import DTYPES, torch_dtype
from sft.common.errors import UserError

# OpenMP threads that spin while they wait make CPU decoding many times slower as soon as another
# process wants the same cores (seen on the shared 2-core development machine; there is no
# benchmark of it in this repository). Sleeping waits cost little when the machine is idle. It only takes
# effect if torch is not imported yet (both commands import this module first); set OMP_WAIT_POLICY
# yourself to choose.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

BACKENDS = ("transformers", "vllm")


class GenerationError(UserError):
    """Bad generation settings or model; the message names what was wrong and the fix."""


class Generation(NamedTuple):
    text: str
    """The decoded output up to (not including) the stop token."""
    output_tokens: int
    """Generated tokens, not counting the EOS that ended the output."""
    truncated: bool
    """True when generation hit max_new_tokens without producing an EOS."""

    @property
    def finish_reason(self) -> str:
        """"stop" (a stop token ended the output) or "length" (max_new_tokens did)."""
        return "length" if self.truncated else "stop"


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise GenerationError(f"--device {device} asked for, but torch sees no CUDA device here. Use --device cpu.")
    return device


def _resolve_dtype(dtype: str, device: str, model_dir: Path):
    """auto: float32 on CPU (bf16 matmuls are slow and lossy there), the config's dtype on GPU."""
    if dtype == "auto" and not device.startswith("cuda"):
        return torch_dtype("float32", {})
    config = {}
    if dtype == "auto":
        try:
            config = json.loads((model_dir / "config.json").read_text())
        except (OSError, json.JSONDecodeError):
            if not model_dir.exists():  # a hub id: its config from the hub cache
                with contextlib.suppress(Exception):
                    from transformers import AutoConfig

                    config = AutoConfig.from_pretrained(str(model_dir)).to_dict()
    return torch_dtype(dtype, config)


def _stop_token_ids(tokenizer, model_dir: Path) -> set[int]:
    """EOS ids of the generation config and tokenizer, plus the token that closes an assistant turn.

    A base model fine-tuned on a chat template ends turns with the template's end-of-turn token
    (e.g. Qwen's <|im_end|>) even when its generation config only lists <|endoftext|>.
    """
    from transformers import GenerationConfig

    stop: set[int] = set()
    try:
        eos = GenerationConfig.from_pretrained(str(model_dir)).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    for value in (eos, tokenizer.eos_token_id):
        if isinstance(value, int):
            stop.add(value)
        elif isinstance(value, (list, tuple)):
            stop.update(v for v in value if isinstance(v, int))
    marker = "ANSWER_END_MARKER"
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": marker}], tokenize=False
        )
    except Exception:  # templates may reject this toy conversation; the EOS ids above still apply
        rendered = ""
    if marker in rendered:
        tail = tokenizer(rendered.split(marker, 1)[1], add_special_tokens=False)["input_ids"]
        if tail and tail[0] in set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder):
            stop.add(tail[0])
    if not stop:
        raise GenerationError(
            f"{model_dir}: neither generation_config.json nor the tokenizer defines an EOS token, so generation "
            "could never stop. Set eos_token_id in the model's generation_config.json."
        )
    return stop


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    except OSError as exc:  # a hub id that is neither cached nor reachable
        raise GenerationError(
            f"cannot load {model_dir}: not a local model directory, and the Hugging Face Hub does not serve it here "
            f"({str(exc).splitlines()[0]}). Pass an exported model directory, or download the model first."
        ) from None
    if not tokenizer.chat_template:
        raise GenerationError(
            f"{model_dir}: the tokenizer has no chat template, so prompts cannot be formatted as in training. "
            "Add one to tokenizer_config.json (or chat_template.jinja), e.g. the template the model was trained with."
        )
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _prompt_token_ids(tokenizer, conversations: list[list[dict]]) -> list[list[int]]:
    texts = [tokenizer.apply_chat_template(c, add_generation_prompt=True, tokenize=False) for c in conversations]
    # The template writes its special tokens itself; adding BOS again would change the prompt.
    return [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]


def _split_at_stop(tokens: list[int], stop_ids: set[int]) -> tuple[list[int], bool]:
    """(tokens before the first stop token, whether a stop token was found)."""
    for position, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:position], True
    return tokens, False


@dataclass(frozen=True)
class Sampling:
    """How outputs are decoded: greedy (temperature 0, one output per prompt) or `num_samples` sampled ones."""

    num_samples: int = 1
    """Outputs per prompt (--num-samples)."""
    temperature: float = 0.0
    """Softmax temperature (--temperature); 0 = greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling (--top-p): sample among the most likely tokens whose probabilities add up to top_p; 1 = all."""
    seed: int = 0
    """Seed of the random stream (--seed); unused when greedy."""

    def __post_init__(self):
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise GenerationError(f"--num-samples must be a whole number of at least 1, not {self.num_samples}.")
        if not self.temperature >= 0:  # also refuses NaN
            raise GenerationError(f"--temperature must be 0 (greedy) or more, not {self.temperature}.")
        if not 0 < self.top_p <= 1:
            raise GenerationError(f"--top-p must be in (0, 1], not {self.top_p}; 1 keeps every token.")
        if self.greedy and self.num_samples > 1:
            raise GenerationError(
                f"--temperature 0 is greedy decoding: all {self.num_samples} samples of a problem would be the same. "
                "Use a temperature above 0 (e.g. 1.0), or --num-samples 1."
            )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


GREEDY = Sampling()


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (e.g. (seed, shard index)): the same parts always give the same seed."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def _transformers_batches(model, tokenizer, prompts: list[list[int]], *, stop_ids: set[int], sampling: Sampling,
                          max_new_tokens: int, batch_size: int, device: str, bar) -> list[list[Generation]]:
    """Batched, left-padded decoding, longest prompts first; `sampling.num_samples` outputs per prompt."""
    import torch
    from transformers import GenerationConfig

    # transformers fills every setting left unset here from the model's generation_config.json (Qwen's
    # instruct models set top_k 20 and repetition_penalty 1.05) and then its own defaults (top_k 50).
    # Sampling pins them to "off", as vLLM samples with SamplingParams: the distribution asked for.
    sampled = {} if sampling.greedy else {
        "temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": 0, "min_p": 0.0,
        "typical_p": 1.0, "repetition_penalty": 1.0, "num_return_sequences": sampling.num_samples,
    }
    generation_config = GenerationConfig(
        max_new_tokens=max_new_tokens, do_sample=not sampling.greedy, eos_token_id=sorted(stop_ids),
        pad_token_id=tokenizer.pad_token_id, **sampled,
    )
    k = sampling.num_samples
    # Sorting by length keeps padding (wasted compute) small; results go back in input order.
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    results: list[list[Generation]] = [[] for _ in prompts]
    # The random stream is the call's own (seeded here, the caller's restored after): the outputs
    # depend only on the prompts, the settings and the seed.
    with torch.random.fork_rng(devices=[] if device == "cpu" else None):
        torch.manual_seed(sampling.seed)
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            padded = tokenizer.pad({"input_ids": [prompts[i] for i in batch]}, padding=True, return_tensors="pt")
            padded = {key: value.to(device) for key, value in padded.items()}
            with torch.inference_mode():
                sequences = model.generate(**padded, generation_config=generation_config)
            new_tokens = sequences[:, padded["input_ids"].shape[1] :].tolist()
            for row, tokens in enumerate(new_tokens):  # num_return_sequences rows per prompt, in order
                kept, stopped = _split_at_stop(tokens, stop_ids)
                results[batch[row // k]].append(
                    Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept), not stopped)
                )
            if bar is not None:
                bar.update(len(batch) * k)
    return results


def _require_vllm():
    try:
        import vllm
    except ImportError as exc:
        raise GenerationError(
            f"--backend vllm needs the vllm package, which is not installed for {sys.executable} ({exc}). "
            "Install it on a GPU machine (pip install vllm, matching your torch/CUDA), or use the default "
            "--backend transformers."
        ) from None
    return vllm


def _vllm_outputs(llm, tokenizer, prompts: list[list[int]], *, stop_ids: set[int], sampling: Sampling,
                  max_new_tokens: int, bar) -> list[list[Generation]]:
    """vLLM decoding (continuous batching: --batch-size does not apply); each prompt seeded on its own."""
    vllm = _require_vllm()
    common = {"max_tokens": max_new_tokens, "stop_token_ids": sorted(stop_ids), "skip_special_tokens": True}
    if sampling.greedy:
        params = vllm.SamplingParams(temperature=0.0, **common)
    else:
        params = [vllm.SamplingParams(n=sampling.num_samples, temperature=sampling.temperature, top_p=sampling.top_p,
                                      seed=derive_seed(sampling.seed, i), **common) for i in range(len(prompts))]
    shown = bar is not None and not bar.disable
    outputs = llm.generate([{"prompt_token_ids": ids} for ids in prompts], params, use_tqdm=shown)
    results = []
    for output in outputs:
        generations = []
        for completion in sorted(output.outputs, key=lambda c: c.index):
            kept, stopped = _split_at_stop(list(completion.token_ids), stop_ids)
            generations.append(Generation(tokenizer.decode(kept, skip_special_tokens=True), len(kept),
                                          completion.finish_reason == "length" and not stopped))
        results.append(generations)
    if bar is not None:
        bar.update(sum(len(g) for g in results))
    return results


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def check_model(model: str | os.PathLike) -> None:
    """A local Hugging Face model directory, or a hub id (`org/name`) that is not a local path."""
    path = Path(model)
    if (path / "config.json").is_file() or (not path.exists() and _HUB_ID.fullmatch(str(model))):
        return
    raise GenerationError(
        f"{path / 'config.json'} not found: {path} is not a Hugging Face model directory. "
        "Export a training checkpoint first: python -m sft.export OUTPUT_DIR -o MODEL_DIR."
    )


class Generator:
    """A model loaded once for many calls, the same for both backends: chat prompts in, decoded outputs out.

        generator = Generator(model_dir, backend="transformers", device="auto", dtype="auto", batch_size=16)
        prompts = generator.prompt_ids([[{"role": "user", "content": "What is 3 + 4?"}]])
        outputs = generator.generate(prompts, Sampling(4, temperature=1.0, seed=0), max_new_tokens=512)
        outputs[0]  # four Generations of the first prompt
    """

    def __init__(self, model: str | os.PathLike, *, backend: str, device: str, dtype: str, batch_size: int):
        if backend not in BACKENDS:
            raise GenerationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
        model_dir = Path(model)
        self.backend, self.batch_size = backend, batch_size
        resolved_device = _resolve_device(device)
        self.torch_dtype = _resolve_dtype(dtype, resolved_device, model_dir)
        self.device = resolved_device if backend == "transformers" else "vllm"
        self.tokenizer = _load_tokenizer(model_dir)
        self.stop_ids = _stop_token_ids(self.tokenizer, model_dir)
        if backend == "vllm":
            vllm = _require_vllm()
            vllm_dtype = str(self.torch_dtype).removeprefix("torch.") if dtype != "auto" else "auto"
            self._engine = vllm.LLM(model=str(model_dir), dtype=vllm_dtype, seed=0)
        else:
            from transformers import AutoModelForCausalLM

            self._engine = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=self.torch_dtype)
            self._engine = self._engine.to(resolved_device).eval()

    @property
    def dtype_name(self) -> str:
        return str(self.torch_dtype).removeprefix("torch.")

    def prompt_ids(self, conversations: list[list[dict]]) -> list[list[int]]:
        """Token ids of each conversation through the chat template, with the generation prompt."""
        return _prompt_token_ids(self.tokenizer, conversations)

    def generate(self, prompts: list[list[int]], sampling: Sampling = GREEDY, *, max_new_tokens: int,
                 bar=None) -> list[list[Generation]]:
        """`sampling.num_samples` outputs per prompt, in prompt order. `bar` (a tqdm, or None) advances by
        the outputs made: batch by batch (transformers), or at the end, with vLLM's own bar meanwhile."""
        if self.backend == "vllm":
            return _vllm_outputs(self._engine, self.tokenizer, prompts, stop_ids=self.stop_ids, sampling=sampling,
                                 max_new_tokens=max_new_tokens, bar=bar)
        return _transformers_batches(self._engine, self.tokenizer, prompts, stop_ids=self.stop_ids,
                                     sampling=sampling, max_new_tokens=max_new_tokens, batch_size=self.batch_size,
                                     device=self.device, bar=bar)


@contextlib.contextmanager
def torch_threads(num_threads: int | None, device: str) -> Iterator[int]:
    """Torch's CPU threads set to `num_threads` (on CPU, when given) inside the block; yields the number used."""
    import torch

    threads_before = torch.get_num_threads()
    if num_threads and device == "cpu":
        torch.set_num_threads(num_threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(threads_before)  # a library call leaves the caller's setting alone


def check_setup(model: str | os.PathLike, backend: str, dtype: str, max_new_tokens: int, batch_size: int) -> None:
    """Refuse bad settings before anything is loaded."""
    if backend not in BACKENDS:
        raise GenerationError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if dtype not in DTYPES:
        raise GenerationError(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if max_new_tokens < 1 or batch_size < 1:
        raise GenerationError("max_new_tokens and batch_size must be at least 1")
    if backend == "vllm":
        _require_vllm()  # fail before loading anything
    check_model(model)


def add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    """The generation flags sft/evaluate.py and sft/generate.py share: length, batching, engine, device, dtype, threads."""
    parser.add_argument("--max-new-tokens", type=int, default=512, help="generation limit per answer, in tokens")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per generate() call, each with its K samples when sampling (transformers backend)")
    parser.add_argument("--backend", choices=BACKENDS, default="transformers", help="generation engine")
    parser.add_argument("--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--dtype", choices=DTYPES, default="auto", help="auto = float32 on CPU, the model config's dtype on GPU"
    )
    parser.add_argument(
        "--num-threads", type=int, default=0,
        help="CPU threads for torch; 0 = torch's default (all cores). On a busy machine, 1 can be much faster",
    )
