"""Memory plan for one FSDP2 rank of verl 0.9.1's SFT trainer: pure arithmetic (imported; not a command).

    config = load_model_config("Qwen/Qwen2.5-0.5B")   # config.json of a directory or the local HF cache, or None
    plan = plan_memory(config, mode="full", world_size=2, max_tokens_per_gpu=8192, gradient_checkpointing=True)
    print(plan.format())                               # one line per item, GiB, the assumptions named
    for message in plan.warnings(free_device_memory("cuda")):
        print(message)                                 # when the plan exceeds the free memory: the fixes, largest first

Nothing here imports torch or transformers at import time (tests/test_memory_plan.py checks it).

What verl 0.9.1 does, and so what is counted (site-packages/verl):
- Weights are loaded in `engine.model_dtype` (fp32 by default: workers/config/engine.py
  FSDPEngineConfig.model_dtype, trainer/config/engine/fsdp.yaml `model_dtype: fp32`;
  workers/engine/fsdp/transformer_impl.py `_build_module` loads with that dtype). FSDP2 shards
  them (`fully_shard`), so each rank keeps 1/world_size of the parameters, of their gradients
  (same dtype as the parameters: FSDP2 reduce-scatters in `reduce_dtype`, fp32 by default,
  into the sharded fp32 gradient) and of torch.optim.AdamW's two moments (workers/config/
  optimizer.py `build_optimizer`; AdamW keeps its state in the parameter dtype).
- Compute runs in `engine.mixed_precision.param_dtype` (bf16 when unset: `_build_fsdp_module`
  builds `MixedPrecisionPolicy(param_dtype, reduce_dtype=fp32)` and autocasts forward_step to
  it; this project's COMPUTE_DTYPE sets it). FSDP2 all-gathers each wrapped unit in that dtype.
  Wrapped units (utils/fsdp_utils.py `apply_fsdp2`, `_select_fsdp2_wrap_targets`): every
  decoder layer; embed_tokens and lm_head each on their own when the embeddings are untied;
  the root module keeps the rest (the final norm, plus the shared embedding when tied), and
  the root is never resharded after forward, so a tied embedding stays gathered through the
  backward pass, its gradient too.
- LoRA (`_build_lora_module`): PEFT adapters on the base model, which stays in model_dtype;
  verl casts the adapters to the base dtype when they differ, so with engine.model_dtype=bf16
  the adapters are bf16 as well (pass adapter_dtype="bf16" to see that case).
- `use_no_sync_for_gradient_accumulation: false` in trainer/config/engine/fsdp.yaml:
  gradients are reduce-scattered after every micro batch, never held unsharded across them.
  With it true (the launcher's choice on a CPU, sft/launcher.py), each unit's unsharded gradient
  is kept from its first micro batch to the step's last (`defer_gradient_sync`): the whole
  model's gradients, unsharded, beside the sharded ones.
- `reshard_after_forward: true`: each decoder layer is freed after its forward and gathered
  again for its backward. With it false (the launcher's choice on a CPU), every unit stays
  gathered from its forward to its backward (`reshard_after_forward=False`): the whole model,
  gathered, at the peak of a micro batch.
- The loss (workers/utils/losses.py `sft_loss`) takes log-probs from
  `verl.utils.torch_functional.logprobs_from_logits`: flash-attn's Triton cross entropy when
  flash-attn is installed (in-place backward: no copy of the logits beyond the logits
  themselves), else `logprobs_from_logits_v2` (a logsumexp per row; this project's
  sft/verl_plugins/cpu/runtime.py swaps it for the same arithmetic on blocks of rows).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Optional

GIB = 1024**3

DTYPE_BYTES = {"fp32": 4, "float32": 4, "bf16": 2, "bfloat16": 2, "fp16": 2, "float16": 2}
"""Bytes per element of the dtype names verl and this project use."""

LLAMA_LIKE = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3")
"""Dense decoder architectures whose parameters this module counts exactly."""

RUNTIME_OVERHEAD_BYTES = {"cuda": GIB, "cpu": GIB // 2}
"""Per process. GPU, assumed: CUDA context, NCCL buffers, allocator slack. CPU: the Python
process itself (measured here: 0.49 GiB resident after importing verl.trainer.sft_trainer)."""

ADAMW_MOMENTS = 2  # exp_avg and exp_avg_sq (torch.optim.AdamW)
REDUCE_BYTES = 4  # FSDP2 reduce_dtype fp32 (verl's default and this project's)
GATHER_TRANSIENT, GATHER_TRANSIENT_CAST = 1.0, 1.5  # x the unit, beside the gathered unit (sft/bench/fsdp_gather.py)
FROZEN_UPCAST_BLOCK_BYTES = 256 << 20  # sft/verl_plugins/cpu/frozen_upcast.py BLOCK_BYTES (a test keeps them equal)

# Logits-sized tensors live at the loss's backward pass without a fused cross entropy: the
# logits, the gather's gradient and the logsumexp's gradient. Measured on CPU (torch 2.13): peak
# RSS of one forward + backward of a 4-layer Qwen2 (hidden 512, vocab 32,000, sdpa), less the
# saved activations and the weight gradients: fp32 2.9 copies (verl's logprobs_from_logits_v2,
# 2,048 tokens), 2.6-3.0 (this project's per-block version, 4,096 tokens); bf16 2.1 (v2).
NO_FUSED_CE_COPIES = 3


@dataclass(frozen=True)
class Linear:
    """One linear layer of a decoder block: what it maps, and whether it has a bias."""

    name: str
    inputs: int
    outputs: int
    bias: bool = False

    @property
    def parameters(self) -> int:
        return self.inputs * self.outputs + (self.outputs if self.bias else 0)


@dataclass(frozen=True)
class Architecture:
    """The shapes of a dense decoder-only model, read from its config.json."""

    model_type: str
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool
    linears: tuple[Linear, ...]
    norms_per_layer: int  # hidden-sized RMSNorms per decoder layer
    qk_norms: bool  # Qwen3 / Gemma3: RMSNorm over each query and key head
    gemma_norm: bool  # Gemma's RMSNorm keeps its fp32 result (x * (1 + w) in fp32)

    @property
    def layer_parameters(self) -> int:
        norms = self.norms_per_layer * self.hidden + (2 * self.head_dim if self.qk_norms else 0)
        return sum(linear.parameters for linear in self.linears) + norms

    @property
    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden

    @property
    def parameters(self) -> int:
        lm_head = 0 if self.tied else self.embedding_parameters
        return self.embedding_parameters + self.layers * self.layer_parameters + self.hidden + lm_head


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a composite config (Gemma 3's `text_config`), else the config."""
    text = config.get("text_config")
    return text if isinstance(text, dict) and "hidden_size" in text else config


def _linears(model_type: str, c: dict[str, Any], head_dim: int) -> tuple[Linear, ...]:
    h, i = c["hidden_size"], c["intermediate_size"]
    q, kv = c["num_attention_heads"] * head_dim, c.get("num_key_value_heads") or c["num_attention_heads"]
    kv *= head_dim
    if model_type == "phi3":  # fused projections (modeling_phi3.py: qkv_proj, gate_up_proj), no biases
        return (Linear("qkv_proj", h, q + 2 * kv), Linear("o_proj", q, h),
                Linear("gate_up_proj", h, 2 * i), Linear("down_proj", i, h))
    qkv_bias = True if model_type == "qwen2" else bool(c.get("attention_bias", False))  # Qwen2: q/k/v biases always
    o_bias = False if model_type == "qwen2" else bool(c.get("attention_bias", False))
    mlp_bias = bool(c.get("mlp_bias", False))
    return (Linear("q_proj", h, q, qkv_bias), Linear("k_proj", h, kv, qkv_bias), Linear("v_proj", h, kv, qkv_bias),
            Linear("o_proj", q, h, o_bias), Linear("gate_proj", h, i, mlp_bias), Linear("up_proj", h, i, mlp_bias),
            Linear("down_proj", i, h, mlp_bias))


_TIED_BY_DEFAULT = {"gemma": True, "gemma2": True, "gemma3_text": True}  # transformers' config defaults; others False
_MOE_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")
_REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")


def architecture(model_config: Optional[dict[str, Any]]) -> "Architecture | str":
    """The model's shapes, or a sentence saying why they cannot be read (never raises)."""
    if not isinstance(model_config, dict):
        return "no model config (config.json) was available"
    c = _text_config(model_config)
    model_type = str(c.get("model_type", ""))
    if model_type == "gemma3" and c is not model_config:
        model_type = "gemma3_text"
    if model_type not in LLAMA_LIKE:
        return f"model_type {model_type or '(none)'!r} is not one of {', '.join(LLAMA_LIKE)}"
    experts = [key for key in _MOE_KEYS if (c.get(key) or 0) not in (0, 1)]
    if experts:
        return f"{model_type} config declares experts ({', '.join(experts)}): a mixture of experts, not a dense model"
    missing = [key for key in _REQUIRED if not isinstance(c.get(key), int) or c.get(key) <= 0]
    if missing:
        return f"config.json lacks {', '.join(missing)}"
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    tied = c.get("tie_word_embeddings")
    return Architecture(
        model_type=model_type, hidden=c["hidden_size"], intermediate=c["intermediate_size"],
        layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
        kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"], head_dim=head_dim,
        vocab=c["vocab_size"], tied=_TIED_BY_DEFAULT.get(model_type, False) if tied is None else bool(tied),
        linears=_linears(model_type, c, head_dim),
        norms_per_layer=4 if model_type in ("gemma2", "gemma3_text") else 2,
        qk_norms=model_type in ("qwen3", "gemma3_text"), gemma_norm=model_type.startswith("gemma"))


def count_parameters(model_config: Optional[dict[str, Any]]) -> Optional[int]:
    """Parameters of a dense model from its config.json; None for an architecture not counted here.

    Embedding + layers x (attention incl. GQA k/v and biases, MLP gate/up/down, norms) + final
    norm + lm_head unless tied. Qwen2.5-0.5B: 494,032,768; Llama-3.1-8B: 8,030,261,248.
    """
    arch = architecture(model_config)
    return arch.parameters if isinstance(arch, Architecture) else None


def lora_targets(arch: Architecture, target_modules: "str | list[str] | tuple[str, ...]") -> tuple[Linear, ...]:
    """The linear layers of one block that PEFT puts adapters on.

    "all-linear" is every linear layer but the output layer (PEFT's rule); a list (or a comma
    list) names modules by their last name component, as PEFT matches them.
    """
    if isinstance(target_modules, str):
        if target_modules.strip() == "all-linear":
            return arch.linears
        target_modules = [name.strip() for name in target_modules.split(",") if name.strip()]
    wanted = {str(name).rsplit(".", 1)[-1] for name in target_modules}
    return tuple(linear for linear in arch.linears if linear.name in wanted)


def lora_parameters(arch: Architecture, rank: int, target_modules="all-linear") -> int:
    """Adapter parameters: rank x (in + out) for each targeted linear, in every layer."""
    return arch.layers * sum(rank * (linear.inputs + linear.outputs) for linear in lora_targets(arch, target_modules))


# ---------------------------------------------------------------------------------------------
# Activations, per token. Every formula below was checked against the bytes autograd saves
# (torch.autograd.graph.saved_tensors_hooks, unique storages) in Hugging Face Qwen2 with sdpa
# on CPU (transformers 5.10.4, torch 2.13): exact, fp32 and bf16, two shapes (see the tests).
# It is the Korthikanti et al. 2022 count ("Reducing Activation Recomputation in Large
# Transformer Models", section 4.1) redone for what Hugging Face's modules really save: no
# dropout masks (attention_dropout is 0), a flash/memory-efficient attention kernel (no
# seq_len^2 scores: it saves q, k, v, its output and a fp32 logsumexp per head), GQA k/v at
# num_key_value_heads, RMSNorm that upcasts to fp32, and a SwiGLU MLP.


def norm_bytes(arch: Architecture, compute_bytes: int, width: int) -> int:
    """Saved by one RMSNorm over `width` features (per token), with the next layer's saved input.

    Llama/Qwen: its input in fp32 (4w), 1/rms (4), the normalised value in the compute dtype
    (bw, kept by the weight's product) and its output (bw, the next linear's input).
    Gemma: the fp32 input and the fp32 normalised value (8w), 1/rms, and the output (bw).
    """
    if arch.gemma_norm:
        return (8 + compute_bytes) * width + 4
    return (4 + 2 * compute_bytes) * width + 4


def layer_activation_bytes(arch: Architecture, compute_bytes: int) -> int:
    """Bytes one decoder layer keeps for the backward pass, per token (no checkpointing).

    norms x norm_bytes(h) + attention b*d*(nq + 2*nkv) [q, k after RoPE; v] + b*nq*d [kernel
    output = o_proj's input] + 4*nq [fp32 logsumexp] + MLP 4*b*i [SiLU input, SiLU output,
    up, down's input]. Not counted: with sdpa and a padding mask (padded micro batches, no
    remove-padding) transformers repeats k/v to nq heads (repeat_kv, +2*b*d*(nq - nkv)) and
    builds a boolean batch x seq_len^2 mask; without a mask (flash-attn, packed or single
    samples) sdpa and flash-attn take GQA natively.
    """
    b, d, h, nq, nkv = compute_bytes, arch.head_dim, arch.hidden, arch.heads, arch.kv_heads
    total = arch.norms_per_layer * norm_bytes(arch, b, h)
    total += b * d * (nq + 2 * nkv) + b * nq * d + 4 * nq + 4 * b * arch.intermediate
    if arch.qk_norms:  # per-head RMSNorm on q and k: fp32 input, 1/rms per head, normalised value
        extra = 8 if arch.gemma_norm else 4 + b
        total += (extra * d + 4) * (nq + nkv)
    if arch.model_type == "phi3":  # v is a view of the fused qkv output: the whole output stays alive
        total += b * d * (nq + nkv)
    return total


def model_activation_bytes(arch: Architecture, compute_bytes: int, tokens: int, gradient_checkpointing: bool,
                           lora_rank: int = 0, lora_linears: int = 0) -> int:
    """Bytes the forward pass of one micro batch of `tokens` tokens saves for backward, without the logits.

    Without checkpointing: every layer's activations. With Hugging Face's (non-reentrant,
    per decoder layer) checkpointing: each layer's input (b*h); the layer recomputed in the
    backward pass is the plan's "layer" item. Plus the final norm, RoPE's cos/sin (2*b*d, shared
    by the layers) and the int64 position ids. LoRA adds each adapter's rank-r intermediate
    (r*b per targeted linear).
    """
    b = compute_bytes
    per_layer = layer_activation_bytes(arch, b) + lora_rank * b * lora_linears
    layers = arch.layers * (b * arch.hidden if gradient_checkpointing else per_layer)
    return tokens * (layers + norm_bytes(arch, b, arch.hidden) + 2 * b * arch.head_dim + 8)


def logits_bytes_per_element(compute_bytes: int, fused_cross_entropy: bool, device: str) -> int:
    """Bytes per element of tokens x vocab at the peak of the loss's backward pass.

    flash-attn's cross entropy (verl uses it when flash-attn is installed, with
    inplace_backward=True): the logits in the compute dtype only; their gradient overwrites
    them. Otherwise (logprobs_from_logits_v2 or this project's per-block version):
    NO_FUSED_CE_COPIES logits-sized tensors (measured on CPU), and on a GPU in bf16 the fp32
    log_softmax rows that autocast saves (4 bytes, estimated, not measured).
    """
    if fused_cross_entropy:
        return compute_bytes
    upcast = 4 if device == "cuda" and compute_bytes < 4 else 0
    return NO_FUSED_CE_COPIES * compute_bytes + upcast


# ---------------------------------------------------------------------------------------------
# The plan.

STATE, COMPUTE, LOSS, LAYER, STEP, HOST = "state", "compute", "loss", "layer", "step", "host"
"""Phases of an item: held all run; live through a micro batch's backward pass; live only at
the loss's backward (the logits: first) or only at a decoder layer's backward (later, once the
logits are freed); live during the optimizer step (activations freed); on the host, not the device."""
_PHASE_ORDER = {STATE: 0, COMPUTE: 1, LOSS: 2, LAYER: 3, STEP: 4, HOST: 5}
TOTAL_RULE = "state + max(compute + max(loss, layer), step)"


@dataclass(frozen=True)
class Item:
    """One line of the plan: what it is, its bytes on one device, and when it is live."""

    name: str
    bytes: int
    phase: str


@dataclass
class MemoryPlan:
    """Line items of one device's memory, their total, and how to read them."""

    title: str
    items: tuple[Item, ...]
    assumptions: tuple[str, ...]
    inputs: dict[str, Any] = field(repr=False)
    unknown_reason: Optional[str] = None

    def phase_bytes(self, phase: str) -> int:
        return sum(item.bytes for item in self.items if item.phase == phase)

    @property
    def total(self) -> Optional[int]:
        """Peak bytes on the device, TOTAL_RULE: the backward pass peaks at the loss or at a layer."""
        if self.unknown_reason:
            return None
        backward = self.phase_bytes(COMPUTE) + max(self.phase_bytes(LOSS), self.phase_bytes(LAYER))
        return self.phase_bytes(STATE) + max(backward, self.phase_bytes(STEP))

    def format(self) -> str:
        """A short table: one line per item in GiB (2 decimals), the total, the assumptions."""
        lines = [self.title]
        width = max([len(item.name) for item in self.items] + [len(TOTAL_RULE)])
        for item in self.items:
            lines.append(f"  {item.phase:<8} {item.name:<{width}} {item.bytes / GIB:>9.2f} GiB")
        if self.unknown_reason:
            lines.append(f"  total    unknown: {self.unknown_reason}")
        else:
            lines.append(f"  {'total':<8} {TOTAL_RULE:<{width}} {self.total / GIB:>9.2f} GiB")
        lines.append("Assumptions:")
        lines.extend(f"  - {text}" for text in self.assumptions)
        return "\n".join(lines)

    def warnings(self, free_bytes: Optional[int], processes: int = 1) -> list[str]:
        """One message when `processes` such ranks need more than `free_bytes`, else none.

        `processes`: ranks sharing that memory (on a CPU, every local rank shares the host's).
        The fixes are named in order of effect, each with the total it would need (re-planned).
        """
        if self.total is None or free_bytes is None or self.total * processes <= free_bytes:
            return []
        options = sorted(_fix_options(self.inputs), key=lambda option: option[1])
        fixes = "; ".join(f"{n}) {text}: {need * processes / GIB:.2f} GiB" for n, (text, need)
                          in enumerate(options, 1))
        shared = f" x {processes} processes = {self.total * processes / GIB:.2f} GiB" if processes > 1 else ""
        return [f"Memory plan: this run needs about {self.total / GIB:.2f} GiB per device{shared}, "
                f"but {free_bytes / GIB:.2f} GiB is free. Fixes, largest effect first (each alone: "
                f"what the run would then need): {fixes or 'none known'}."]


def _fix_options(inputs: dict[str, Any]) -> list[tuple[str, int]]:
    """(fix, total it would need) for each fix that applies, in the order the docs give them."""
    candidates = []
    if inputs["mode"] == "full":
        candidates.append(("LoRA (scripts/run_sft_peft.sh: rank 32, all-linear, bf16 frozen base)",
                           dict(mode="lora", lora_rank=32, target_modules="all-linear", frozen_dtype="bf16")))
    world = inputs["world_size"]
    candidates.append((f"more devices (FSDP world size {world} -> {2 * world})", dict(world_size=2 * world)))
    if inputs["device"] == "cuda" and not inputs["offload"]:
        candidates.append(("CPU offload (engine.offload_policy=true)", dict(offload=True)))
    tokens = inputs["max_tokens_per_gpu"]
    if tokens >= 2:
        candidates.append((f"a smaller MAX_TOKENS_PER_GPU ({tokens} -> {tokens // 2}, at least MAX_LENGTH)",
                           dict(max_tokens_per_gpu=tokens // 2)))
    if not inputs["gradient_checkpointing"]:
        candidates.append(("gradient checkpointing (GRADIENT_CHECKPOINTING=1)", dict(gradient_checkpointing=True)))
    options = []
    for text, change in candidates:
        total = plan_memory(**{**inputs, **change}).total
        if total is not None:
            options.append((text, total))
    return options


def _bytes_of(name: str, what: str) -> int:
    try:
        return DTYPE_BYTES[str(name).lower()]
    except KeyError:
        raise ValueError(f"{what}={name!r}: use one of {', '.join(DTYPE_BYTES)}.") from None


def _generic_architecture(model_config: Optional[dict[str, Any]]) -> Optional[Architecture]:
    """Llama-like shapes from the common config.json fields of an architecture not counted here."""
    if not isinstance(model_config, dict):
        return None
    c = _text_config(model_config)
    if any(not isinstance(c.get(key), int) or c.get(key) <= 0 for key in _REQUIRED):
        return None
    head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    return Architecture(
        model_type=f"{c.get('model_type', 'unknown')} (shapes assumed Llama-like)", hidden=c["hidden_size"],
        intermediate=c["intermediate_size"], layers=c["num_hidden_layers"], heads=c["num_attention_heads"],
        kv_heads=c.get("num_key_value_heads") or c["num_attention_heads"], head_dim=head_dim,
        vocab=c["vocab_size"], tied=bool(c.get("tie_word_embeddings", False)),
        linears=_linears("llama", c, head_dim), norms_per_layer=2, qk_norms=False, gemma_norm=False)


def _resolve(model_config, parameter_count: Optional[int]) -> tuple[Optional[Architecture], Optional[int], list[str]]:
    """(shapes, parameter count, notes); shapes None when unknown, the notes say why."""
    arch = architecture(model_config)
    if isinstance(arch, Architecture):
        notes = []
        if parameter_count is not None and parameter_count != arch.parameters:
            notes.append(f"parameter count {parameter_count:,} given; the config's shapes give {arch.parameters:,}")
        return arch, parameter_count or arch.parameters, notes
    reason = arch
    if parameter_count is None:
        return None, None, [f"unknown architecture: {reason}; pass parameter_count= to plan it anyway"]
    generic = _generic_architecture(model_config)
    if generic is None:
        return None, parameter_count, [f"{reason}; {parameter_count:,} parameters given, but config.json lacks the "
                                       f"shapes ({', '.join(_REQUIRED)}) that activations need"]
    return generic, parameter_count, [f"{reason}; {parameter_count:,} parameters given, "
                                      "layer shapes assumed Llama-like"]


def _state_items(params: int, adapters: int, inputs: dict[str, Any]) -> list[Item]:
    """Sharded parameters, gradients and AdamW moments (1/world_size of each)."""
    world, held = inputs["world_size"], HOST if inputs["offload"] else STATE
    if inputs["mode"] == "full":
        pb = _bytes_of(inputs["param_dtype"], "param_dtype")
        name, trainable, tb = inputs["param_dtype"], params, pb
        items = [Item(f"parameters ({name}, 1/{world} shard)", params * pb // world, held)]
    else:
        fb, tb = _bytes_of(inputs["frozen_dtype"], "frozen_dtype"), _bytes_of(inputs["adapter_dtype"], "adapter_dtype")
        name, trainable = inputs["adapter_dtype"], adapters
        frozen = inputs["frozen_dtype"]
        items = [Item(f"frozen base parameters ({frozen}, 1/{world} shard)", params * fb // world, held),
                 Item(f"LoRA adapters ({name}, 1/{world} shard)", adapters * tb // world, held)]
    items.append(Item(f"gradients ({name}, 1/{world} shard)", trainable * tb // world, held))
    items.append(Item(f"AdamW moments ({name}, 1/{world} shard)",
                      ADAMW_MOMENTS * trainable * tb // world, held))
    items.append(Item("AdamW step temporaries (1 shard copy)", trainable * tb // world,
                      HOST if inputs["offload"] else STEP))
    return items


def _fsdp_units(arch: Architecture, block: int, vocab_parallel: bool = False) -> tuple[int, int]:
    """(root unit, largest other unit) in parameters, as verl's apply_fsdp2 wraps them (vocab_parallel:
    the embedding and LM head are no unit at all, sft/verl_plugins/cpu/vocab_parallel.py)."""
    embedding = 0 if vocab_parallel else arch.embedding_parameters
    root = arch.hidden + (embedding if arch.tied else 0)
    largest = max(block, 0 if arch.tied else embedding)
    return root, largest


def _compute_items(arch: Architecture, inputs: dict[str, Any]) -> list[Item]:
    """What is live at the peak of a micro batch's backward pass."""
    b = _bytes_of(inputs["compute_dtype"], "compute_dtype")
    tokens, lora = inputs["max_tokens_per_gpu"], inputs["mode"] == "lora"
    targets = lora_targets(arch, inputs["target_modules"]) if lora else ()
    adapters_per_layer = sum(inputs["lora_rank"] * (t.inputs + t.outputs) for t in targets)
    block = arch.layer_parameters + adapters_per_layer
    vocab_parallel = lora and inputs["vocab_parallel"]
    root, largest = _fsdp_units(arch, block, vocab_parallel)
    in_flight = (root + largest + block) * b
    gathered = f"gathered {inputs['compute_dtype']} params (root + 2 units)"
    every_unit = root + arch.layers * block + (0 if arch.tied or vocab_parallel else 2 * arch.embedding_parameters)
    if not inputs["reshard_after_forward"]:
        in_flight, gathered = every_unit * b, f"gathered {inputs['compute_dtype']} params (every unit: no reshard)"
    stored = inputs["param_dtype"] if not lora else inputs["frozen_dtype"]
    biggest_gathered, cast = max(root, largest) * b, stored != inputs["compute_dtype"]
    if lora and inputs["frozen_upcast"]:
        # sft/verl_plugins/cpu/frozen_upcast.py: frozen weights gathered in their own dtype, adapters in
        # theirs; one block (at most FROZEN_UPCAST_BLOCK_BYTES) of a frozen weight in fp32 at a time.
        fb, tb = _bytes_of(inputs["frozen_dtype"], "frozen_dtype"), _bytes_of(inputs["adapter_dtype"], "adapter_dtype")
        adapters_gathered = adapters_per_layer * (2 if largest == block else 1)
        frozen_params = root + largest + block - adapters_gathered
        if not inputs["reshard_after_forward"]:  # every unit stays gathered
            adapters_gathered = adapters_per_layer * arch.layers
            frozen_params = every_unit - adapters_gathered
        widest = max((t.inputs * t.outputs for t in arch.linears), default=0)
        if vocab_parallel:  # the LM head's rows of this process, fp32 block by block
            widest = max(widest, -(-arch.vocab // inputs["world_size"]) * arch.hidden)
        elif not arch.tied:
            widest = max(widest, arch.embedding_parameters)
        in_flight = frozen_params * fb + adapters_gathered * tb + min(widest * b, FROZEN_UPCAST_BLOCK_BYTES)
        units = "root + 2 units" if inputs["reshard_after_forward"] else "every unit: no reshard"
        gathered = f"gathered params ({inputs['frozen_dtype']} base, {units}) + one fp32 block"
        biggest_gathered, cast = max(root, largest) * fb, False
    # FSDP2 gathers a unit into a buffer and copies it out into the parameters: measured on CPU
    # (python -m sft.bench.fsdp_gather), a gather peaks at 2x the unit, 2.5x when it casts.
    transient = int(biggest_gathered * (GATHER_TRANSIENT_CAST if cast else GATHER_TRANSIENT)) \
        if inputs["device"] == "cpu" else 0
    if lora and inputs["defer_gradient_sync"]:  # every layer's adapters' gradients, kept until the last micro batch
        unsharded_grads = arch.layers * adapters_per_layer * b + adapters_per_layer * REDUCE_BYTES
    elif lora:
        unsharded_grads = adapters_per_layer * (b + REDUCE_BYTES)
    elif inputs["defer_gradient_sync"]:  # the whole model's, kept until the last micro batch
        unsharded_grads = every_unit * b + largest * REDUCE_BYTES
    else:
        unsharded_grads = root * b + largest * (b + REDUCE_BYTES)
    gc = inputs["gradient_checkpointing"]
    rank = inputs["lora_rank"] if lora else 0
    activations = model_activation_bytes(arch, b, tokens, gc, rank, len(targets))
    per_layer = layer_activation_bytes(arch, b) + rank * b * len(targets)
    per_element = logits_bytes_per_element(b, inputs["flash_attn_installed"], inputs["device"])
    dtype = inputs["compute_dtype"]
    return [
        Item(gathered, in_flight, COMPUTE),
        *([Item("all-gather buffer of the largest unit (measured)", transient, COMPUTE)] if transient else []),
        Item(f"unsharded grads ({dtype} + fp32 reduce{', every unit: sync deferred' if inputs['defer_gradient_sync'] else ''})",
             unsharded_grads, COMPUTE),
        Item(f"saved activations ({tokens} tokens, checkpointing {'on' if gc else 'off'})", activations, COMPUTE),
        Item(f"logits + loss copies ({tokens} x {arch.vocab} x {per_element} B)", tokens * arch.vocab * per_element,
             LOSS),
        Item("recomputed layer + its gradients" if gc else "a layer's activation gradients",
             tokens * per_layer * (2 if gc else 1), LAYER),
    ]


def plan_memory(model_config: Optional[dict[str, Any]], *, mode: str = "full", world_size: int = 1,
                max_tokens_per_gpu: int = 8192, gradient_checkpointing: bool = True, param_dtype: str = "fp32",
                compute_dtype: str = "bf16", lora_rank: int = 32, target_modules="all-linear",
                frozen_dtype: str = "fp32", adapter_dtype: str = "fp32", parameter_count: Optional[int] = None,
                device: str = "cuda", flash_attn_installed: Optional[bool] = None, offload: bool = False,
                overhead_bytes: Optional[int] = None, frozen_upcast: Optional[bool] = None,
                vocab_parallel: Optional[bool] = None, defer_gradient_sync: bool = False,
                reshard_after_forward: bool = True) -> MemoryPlan:
    """The memory one FSDP2 rank of verl's SFT trainer needs, item by item (never raises on a config).

    mode: "full" or "lora". world_size: FSDP ranks sharing the shards. max_tokens_per_gpu:
    tokens of one micro batch (verl's data.max_token_len_per_gpu). param_dtype: dtype of the
    trained weights (verl's engine.model_dtype, fp32). compute_dtype: engine.mixed_precision
    .param_dtype (bf16 | fp32). frozen_dtype: LoRA's frozen base (fp32 as verl loads it today;
    bf16 halves it). adapter_dtype: the adapters, their gradients and AdamW state. parameter_count:
    for an architecture not counted here. device: "cuda" or "cpu". flash_attn_installed: verl then
    uses flash-attn's cross entropy (default: on cuda). offload: engine.offload_policy=true
    (FSDP2 keeps parameters, gradients and optimizer state on the host). overhead_bytes: the
    runtime's own memory (default RUNTIME_OVERHEAD_BYTES[device]). frozen_upcast: LoRA's frozen
    base gathered in its own dtype and computed in fp32 block by block (sft/verl_plugins/
    frozen_upcast.py; default: where the launchers load it, LoRA on CPU with fp32 compute on a
    lower-precision base). vocab_parallel: with frozen_upcast on several processes, the frozen
    embedding and LM head kept as each process's rows and computed vocabulary-parallel, never
    gathered (sft/verl_plugins/cpu/vocab_parallel.py; default: wherever frozen_upcast is, world_size > 1).
    defer_gradient_sync: engine.use_no_sync_for_gradient_accumulation (unsharded gradients of every unit
    kept across micro batches). reshard_after_forward: engine.reshard_after_forward (False: every unit
    stays gathered from its forward to its backward).
    """
    if mode not in ("full", "lora"):
        raise ValueError(f"mode={mode!r}: use 'full' or 'lora'.")
    if world_size < 1 or max_tokens_per_gpu < 1 or (mode == "lora" and lora_rank < 1):
        raise ValueError("world_size, max_tokens_per_gpu and (for LoRA) lora_rank must be at least 1.")
    device = "cuda" if str(device).startswith(("cuda", "gpu")) else "cpu"
    if frozen_upcast is None:
        frozen_upcast = mode == "lora" and device == "cpu" and compute_dtype == "fp32" and frozen_dtype != "fp32"
    if vocab_parallel is None:
        vocab_parallel = bool(frozen_upcast) and world_size > 1
    vocab_parallel = bool(vocab_parallel and frozen_upcast and mode == "lora" and world_size > 1)
    inputs = dict(model_config=model_config, mode=mode, world_size=world_size, max_tokens_per_gpu=max_tokens_per_gpu,
                  gradient_checkpointing=gradient_checkpointing, param_dtype=param_dtype, compute_dtype=compute_dtype,
                  lora_rank=lora_rank, target_modules=target_modules, frozen_dtype=frozen_dtype,
                  adapter_dtype=adapter_dtype, parameter_count=parameter_count, device=device,
                  flash_attn_installed=(device == "cuda") if flash_attn_installed is None else flash_attn_installed,
                  offload=offload, frozen_upcast=frozen_upcast, vocab_parallel=vocab_parallel,
                  defer_gradient_sync=defer_gradient_sync, reshard_after_forward=reshard_after_forward,
                  overhead_bytes=RUNTIME_OVERHEAD_BYTES[device] if overhead_bytes is None else overhead_bytes)
    arch, params, notes = _resolve(model_config, parameter_count)
    adapters = lora_parameters(arch, lora_rank, target_modules) if arch and mode == "lora" else 0
    items: list[Item] = []
    if params is not None:
        items += _state_items(params, adapters, inputs)
        load_bytes = params * _bytes_of(param_dtype if mode == "full" else frozen_dtype, "dtype")
        items.append(Item("host RAM at load (rank 0; all if tied)", load_bytes, HOST))
    items.append(Item("runtime overhead (assumed)", inputs["overhead_bytes"], STATE))
    if arch is not None:
        items += _compute_items(arch, inputs)
    if mode == "lora" and arch is not None and not lora_targets(arch, target_modules):
        notes.append(f"target_modules={target_modules!r} matches no linear layer of {arch.model_type} "
                     f"({', '.join(linear.name for linear in arch.linears)}): PEFT would refuse it")
    unknown = "; ".join(notes) if arch is None else None
    items.sort(key=lambda item: _PHASE_ORDER[item.phase])
    return MemoryPlan(title=_title(arch, params, adapters, inputs), items=tuple(items),
                      assumptions=tuple(notes if arch is not None else []) + _assumptions(inputs),
                      inputs=inputs, unknown_reason=unknown)


def _title(arch: Optional[Architecture], params: Optional[int], adapters: int, inputs: dict[str, Any]) -> str:
    model = arch.model_type if arch else "unknown model"
    size = f"{params / 1e6:,.1f}M params" if params else "parameters unknown"
    how = "full fine-tuning" if inputs["mode"] == "full" else (
        f"LoRA r={inputs['lora_rank']} {inputs['target_modules']} ({adapters / 1e6:,.2f}M adapter params)")
    return (f"Memory plan per {inputs['device']} device: {model}, {size}, {how}\n  FSDP world size "
            f"{inputs['world_size']}, {inputs['max_tokens_per_gpu']} tokens per micro batch, "
            f"{inputs['compute_dtype']} compute, "
            f"gradient checkpointing {'on' if inputs['gradient_checkpointing'] else 'off'}"
            + (", CPU offload" if inputs["offload"] else ""))


def _assumptions(inputs: dict[str, Any]) -> tuple[str, ...]:
    """The assumptions behind the numbers, named for the reader of format()."""
    held = inputs["param_dtype"] if inputs["mode"] == "full" else f"base {inputs['frozen_dtype']}, " \
        f"adapters {inputs['adapter_dtype']}"
    lines = [
        f"dtypes: weights {held} (engine.model_dtype), compute {inputs['compute_dtype']} "
        "(engine.mixed_precision.param_dtype), gradients and AdamW moments as the trained weights, reduce fp32",
        "FSDP2 units as verl wraps them: each decoder layer; embed_tokens and lm_head when untied; the root "
        "(final norm, tied embedding) stays gathered through backward; " + (
            "one more layer prefetched" if inputs["reshard_after_forward"] else
            "every unit stays gathered from its forward to its backward (engine.reshard_after_forward=false)"),
        "gradients of every unit held unsharded until the step's last micro batch "
        "(engine.use_no_sync_for_gradient_accumulation=true)" if inputs["defer_gradient_sync"] else
        "gradients reduce-scattered every micro batch (fsdp.yaml use_no_sync_for_gradient_accumulation: false)",
        "activations: what Hugging Face modules save for backward, flash/memory-efficient attention "
        "(no seq^2 scores), no padding; checked exactly against autograd for Qwen2 on CPU",
        "loss: flash-attn cross entropy, gradient in place (logits only)" if inputs["flash_attn_installed"] else
        f"loss: no flash-attn, verl's logprobs_from_logits_v2: {NO_FUSED_CE_COPIES} logits-sized copies "
        "at the loss's backward (measured on CPU)" + (", plus autocast's fp32 log_softmax rows on a GPU"
                                                       if inputs["device"] == "cuda" else ""),
        f"total = {TOTAL_RULE}: the logits are freed before the layers' backward, the optimizer "
        "step runs after it; a layer's activation gradients taken as large as its activations; host items "
        "are not on the device",
        f"runtime overhead {inputs['overhead_bytes'] / GIB:.2f} GiB per process, assumed",
        "FSDP2's all-gather buffer of the largest unit: 1x the gathered unit beside it, 1.5x when the gather casts "
        "(measured on CPU, python -m sft.bench.fsdp_gather)" if inputs["device"] == "cpu" else
        "FSDP2's all-gather buffer: not counted on a GPU (measured on CPU only: 1x-1.5x the largest unit)",
        "not counted: allocator fragmentation, padded micro batches' sdpa mask and k/v repeat, kernel "
        "workspaces, checkpoint saving",
    ]
    if inputs["mode"] == "lora":
        lines.append(f"LoRA: adapters {inputs['adapter_dtype']}; verl 0.9.1 alone casts them to the base dtype "
                     "(engine.model_dtype=bf16 makes them bf16) unless a plugin casts them back; adapter "
                     "intermediates counted; untargeted frozen linears' inputs counted as saved (an upper bound)")
        if inputs["frozen_upcast"]:
            lines.append("LoRA on CPU: the frozen base gathered in its own dtype, each frozen linear computed in fp32 "
                         "one block of rows at a time (sft/verl_plugins/cpu/frozen_upcast.py)")
        if inputs["vocab_parallel"]:
            lines.append("LoRA on CPU, several processes: the frozen embedding and LM head are each process's rows, "
                         "never gathered; logits computed vocabulary-parallel (their all-to-all copies are counted "
                         "within the loss's logits-sized copies; sft/verl_plugins/cpu/vocab_parallel.py)")
    if inputs["device"] == "cpu":
        lines.append("CPU: every local rank shares the host's memory; compare processes x total")
    return tuple(lines)


# ---------------------------------------------------------------------------------------------
# Inputs from the machine and the model directory.


def _cpu_available_bytes() -> Optional[int]:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024  # the kernel reports kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil  # in requirements.txt; for systems without /proc (macOS)
    except ImportError:
        return None
    return int(psutil.virtual_memory().available)


def free_device_memory(device: str) -> Optional[int]:
    """Free bytes of `device` now: "cuda" / "cuda:N" (torch.cuda.mem_get_info) or "cpu" (MemAvailable).

    None when unknown (no torch, no CUDA device, no /proc/meminfo). torch is imported only here,
    and only for a CUDA device.
    """
    device = str(device)
    if device == "cpu":
        return _cpu_available_bytes()
    if not device.startswith("cuda"):
        return None
    try:
        import torch
    except ImportError:
        return None
    try:
        if not torch.cuda.is_available():
            return None
        index = int(device.split(":", 1)[1]) if ":" in device else torch.cuda.current_device()
        free, _total = torch.cuda.mem_get_info(index)
    except (RuntimeError, ValueError, AssertionError):
        return None
    return int(free)


def load_model_config(model_name_or_dir: str) -> Optional[dict[str, Any]]:
    """config.json of a local model directory, or of a hub id already in the local Hugging Face cache.

    Offline: huggingface_hub.try_to_load_from_cache never downloads. None when neither has it.
    """
    path = os.path.expanduser(str(model_name_or_dir))
    if os.path.isdir(path):
        return _read_json(os.path.join(path, "config.json"))
    if os.path.isfile(path) and path.endswith(".json"):
        return _read_json(path)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        cached = try_to_load_from_cache(repo_id=str(model_name_or_dir), filename="config.json")
    except Exception:  # HFValidationError for a string that is no repo id; any cache oddity: unknown
        return None
    return _read_json(cached) if isinstance(cached, str) else None


def _read_json(path: str) -> Optional[dict[str, Any]]:
    try:
        with open(path) as file:
            data = json.load(file)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
