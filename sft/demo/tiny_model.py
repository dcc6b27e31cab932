"""Build a tiny Hugging Face model and tokenizer locally, with no downloads.

Usage:
    python -m sft.demo.tiny_model --output-dir outputs/tiny-model
    python -m sft.demo.tiny_model --output-dir /tmp/m --hidden-size 128 --num-layers 4 --seed 1

The model is a real Qwen2 architecture (a few layers, random weights) and the tokenizer a
byte-level BPE trained on a small built-in math corpus, with digits split one per token (as
Qwen does), a Qwen-style chat template (`<|im_start|>role ... <|im_end|>`) and `<|im_end|>`
as EOS. Tests, the launchers' main job and the demo all build their model here, so the same
code path is exercised everywhere. Building is deterministic for a seed and takes about a
second; an existing, complete output directory built with the same settings is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as `python sft/demo/tiny_model.py`: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sft.common.files import staging_directory
from sft.launch.memory_plan import count_parameters

# The Qwen2.5 chat template without its default system prompt: every message renders as
# "<|im_start|>{role}\n{content}<|im_end|>\n". Rendering each message separately and
# concatenating gives the same tokens as rendering the conversation at once, which is what
# verl's MultiTurnSFTDataset checks.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

PAD_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
SPECIAL_TOKENS = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN]

# Enough text for the BPE to learn the words of math problems and step-by-step solutions.
_CORPUS_LINES = [
    "Solve: What is 12 + 35? Step 1: Add the tens. Step 2: Add the ones. The answer is \\boxed{47}.",
    "Solve: Compute 7 * 8 - 3. Step 1: Multiply 7 by 8 to get 56. Step 2: Subtract 3 to get 53.",
    "Problem: A store sells 4 apples for 3 dollars. How much do 12 apples cost?",
    "Solution: First, find the number of groups. Then multiply. Therefore the total is 9 dollars.",
    "Let x be the number. Then 2x + 5 = 17, so x = 6. Final answer: \\boxed{6}",
    "The sum of the angles of a triangle is 180 degrees. The area of a rectangle is length times width.",
    "Simplify the fraction \\frac{6}{8} = \\frac{3}{4}. The square root of 49 is 7.",
    "system user assistant You are a helpful assistant. Please reason step by step, and put your "
    "final answer within \\boxed{}.",
    "Add subtract multiply divide plus minus times equals sum difference product quotient remainder",
    "Question: If Tom has 15 marbles and gives away 6, how many are left? Answer: 9",
    "We know that the perimeter is 2(a + b). Substituting, we get 2(3 + 4) = 14.",
    "Since 3^2 + 4^2 = 5^2, the triangle is a right triangle. Hence the hypotenuse is 5.",
    "( ) [ ] { } + - * / = < > ^ _ . , : ; ? ! ' \" $ % & # @ \\ |",
    "0 1 2 3 4 5 6 7 8 9 a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "A B C D E F G H I J K L M N O P Q R S T U V W X Y Z",
]


@dataclass
class TinyModelSpec:
    """Shape of the tiny model and tokenizer; every field is recorded in the output."""

    hidden_size: int = 64
    """Width of the residual stream."""
    num_layers: int = 2
    """Number of decoder layers."""
    num_heads: int = 4
    """Attention heads (hidden_size must be divisible by it)."""
    num_kv_heads: int = 2
    """Key/value heads for grouped-query attention (must divide num_heads)."""
    intermediate_size: int = 128
    """Width of the MLP."""
    vocab_size: int = 512
    """Target BPE vocabulary size, special tokens included (the 256 byte symbols come first)."""
    max_position_embeddings: int = 4096
    """Longest sequence the rotary embedding is configured for."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the LM head, as small Qwen models do."""
    seed: int = 0
    """Seed of the random weights."""
    initializer_range: float = 0.02
    """Standard deviation of the random initial weights (Qwen2's default 0.02). A tiny model
    trained from scratch learns to copy digits far sooner from a larger one: 0.1 in the demo."""
    extra_corpus: list[str] = field(default_factory=list)
    """Additional text the tokenizer is trained on."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not divisible by num_kv_heads {self.num_kv_heads}")
        if not self.initializer_range > 0:
            raise ValueError(f"initializer_range must be > 0, got {self.initializer_range}")
        if self.vocab_size < 256 + len(SPECIAL_TOKENS):
            raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")


def build_tokenizer(spec: TinyModelSpec):
    """Train a byte-level BPE on the built-in corpus and wrap it as a fast HF tokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            # One token per digit, as Qwen's tokenizer does: numbers stay learnable.
            pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS_LINES + list(spec.extra_corpus), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=None,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        chat_template=CHAT_TEMPLATE,
        model_max_length=spec.max_position_embeddings,
        padding_side="left",
    )


def build_model(spec: TinyModelSpec, tokenizer):
    """A randomly initialised Qwen2 causal LM sized by `spec`."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        initializer_range=spec.initializer_range,
        bos_token_id=tokenizer.convert_tokens_to_ids(BOS_TOKEN),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


SPEC_FILE = "tiny_model_spec.json"


def build_tiny_model(output_dir: str | os.PathLike, spec: TinyModelSpec | None = None, force: bool = False) -> Path:
    """Write a tiny model and tokenizer to `output_dir` and return its path.

    Reuses `output_dir` when it already holds a complete build of the same spec (the spec
    file is written last). Writes into a temporary sibling and renames it into place, so an
    interrupted build never leaves a half-written model behind.
    """
    spec = spec or TinyModelSpec()
    output_dir = Path(output_dir)
    spec_json = json.dumps(asdict(spec), indent=2, sort_keys=True)
    spec_path = output_dir / SPEC_FILE
    if not force and spec_path.is_file() and spec_path.read_text() == spec_json:
        return output_dir

    with staging_directory(output_dir) as tmp_dir:
        tokenizer = build_tokenizer(spec)
        model = build_model(spec, tokenizer)
        tokenizer.save_pretrained(tmp_dir)
        model.save_pretrained(tmp_dir, safe_serialization=True)
        (tmp_dir / SPEC_FILE).write_text(spec_json)
    return output_dir


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = TinyModelSpec()
    parser = argparse.ArgumentParser(
        description="Build a tiny Qwen2 model and BPE tokenizer (random weights, no downloads).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--output-dir", "-o", required=True, help="directory to write the model and tokenizer to")
    parser.add_argument("--hidden-size", type=int, default=defaults.hidden_size, help="residual width")
    parser.add_argument("--num-layers", type=int, default=defaults.num_layers, help="decoder layers")
    parser.add_argument("--num-heads", type=int, default=defaults.num_heads, help="attention heads")
    parser.add_argument("--num-kv-heads", type=int, default=defaults.num_kv_heads, help="key/value heads")
    parser.add_argument("--intermediate-size", type=int, default=defaults.intermediate_size, help="MLP width")
    parser.add_argument("--vocab-size", type=int, default=defaults.vocab_size, help="BPE vocabulary size")
    parser.add_argument(
        "--max-position-embeddings", type=int, default=defaults.max_position_embeddings, help="longest sequence"
    )
    parser.add_argument("--seed", type=int, default=defaults.seed, help="seed of the random weights")
    parser.add_argument(
        "--initializer-range", type=float, default=defaults.initializer_range,
        help="standard deviation of the random initial weights",
    )
    parser.add_argument(
        "--corpus", action="append", default=[], metavar="FILE",
        help="extra text file to train the tokenizer on (repeatable)",
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if an identical build exists")
    return parser.parse_args(argv)


_SPEC_OPTIONS = ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size", "vocab_size",
                 "max_position_embeddings", "seed", "initializer_range")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    extra = []
    for corpus in args.corpus:
        try:
            extra.extend(Path(corpus).read_text(encoding="utf-8").splitlines())
        except OSError as exc:
            print(f"error: cannot read corpus file {corpus}: {exc.strerror}", file=sys.stderr)
            return 2
    try:
        # Every option is a TinyModelSpec field of the same name (tie_word_embeddings keeps its default).
        given = {name: getattr(args, name) for name in _SPEC_OPTIONS}
        spec = TinyModelSpec(**given, extra_corpus=extra)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = build_tiny_model(args.output_dir, spec, force=args.force)
    config = json.loads((Path(path) / "config.json").read_text())
    n_params = count_parameters(config)  # the memory plan's count, from the shapes (no weights loaded)
    print(f"tiny model ready: {path} ({config['model_type']}, {n_params / 1e6:.2f}M parameters, "
          f"vocab {config['vocab_size']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
