"""TRL's SFTTrainer on the benchmark's model and data: the peer scripts/benchmark_training.py compares us with.

Usage (scripts/benchmark_training.py runs it under torchrun for its trl-* configurations):
    PYTHONPATH=.:/path/to/trl-site torchrun --nproc_per_node 2 -m sft.bench.trl_run --model MODEL_DIR \\
        --train-file data/train.parquet --output-dir OUT --train-batch-size 32 --steps 4 --micro-batch 1

TRL is not a dependency of verl-sft; TRL_INSTALL_HINT says how to install it beside the virtual
environment without changing torch or transformers. What TRL trains is exactly what our launcher
trains: each sample is encoded by the dataset class our runs load (sft/verl_plugins/sft_dataset.py,
the Parquet file's recorded chat template settings), and TRL gets the token ids and the loss mask
as a pre-tokenised data set (`input_ids`, `assistant_masks`), so it neither templates nor appends
anything. The samples come in the order verl's trainer draws them (its seeded DistributedSampler,
replayed by `verl_sample_order`), and TRL reads them sequentially, so each optimiser step trains
the same samples as ours (with --packing, the same samples packed by TRL's best-fit decreasing).

It prints, on rank 0, the loss-bearing tokens of the data both ways (`[trl-run] loss-bearing
tokens: ours N, TRL N`) and per optimiser step a line in verl's format (`step:N - train/loss:...
train/global_tokens:... train/loss_tokens:...`) that the benchmark times like verl's own.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run by file path: make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

TRL_VERSION = "1.16.0"
TRL_INSTALL_HINT = (f"TRL is not installed (it is not a dependency of verl-sft). Install it beside the virtual "
                    f"environment, without touching torch or transformers: .venv/bin/python -m pip install --no-deps "
                    f"--target .trl-site trl=={TRL_VERSION}; then run the benchmark with TRL_SITE=.trl-site (or "
                    f"PYTHONPATH=.trl-site)")


def trl_available(site: str = "") -> bool:
    """Whether `import trl` would work with the folder `site` (TRL_SITE) put first on the path; imports nothing."""
    import importlib.machinery

    path = [site, *sys.path] if site else sys.path
    return importlib.machinery.PathFinder.find_spec("trl", path) is not None


def verl_sample_order(samples: int, world: int, train_batch_size: int, steps: int) -> list[int]:
    """Dataset indices in the order verl's trainer trains them: per step, every rank's window of its
    DistributedSampler (seed 0, shuffled, epoch 0), rank by rank; `steps` steps at most."""
    from torch.utils.data import DistributedSampler

    per_rank = train_batch_size // world
    ranks = []
    for rank in range(world):
        sampler = DistributedSampler(range(samples), num_replicas=world, rank=rank, shuffle=True, seed=0,
                                     drop_last=True)
        sampler.set_epoch(0)
        ranks.append(list(sampler))
    order = []
    for step in range(min(steps, len(ranks[0]) // per_rank)):
        for indices in ranks:
            order.extend(indices[step * per_rank:(step + 1) * per_rank])
    return order


def encode_samples(train_file: str, model_dir: str, max_length: int, order: list[int]) -> tuple[list, list]:
    """(input_ids, loss masks) of the samples `order` names, as our runs' dataset class encodes them."""
    from transformers import AutoTokenizer

    from sft.verl_plugins.sft_dataset import ChatTemplateSFTDataset

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    os.environ.setdefault("RANK", "0")
    dataset = ChatTemplateSFTDataset([train_file], tokenizer, config={"max_length": max_length,
                                                                      "pad_mode": "no_padding"})
    ids, masks = [], []
    for index in order:
        item = dataset[index]
        ids.append(item["input_ids"].tolist())
        masks.append(item["loss_mask"].tolist())
    return ids, masks


def ours_loss_tokens(masks: list[list[int]]) -> int:
    """Tokens verl trains on: the loss mask shifted by one (the first token of a sample is never predicted)."""
    return sum(sum(mask[1:]) for mask in masks)


def trl_loss_tokens(dataset) -> int:
    """Tokens TRL trains on in its prepared data set: labels that are not -100, except each sequence's
    first token (never predicted; its padding-free collator also masks it)."""
    total = 0
    for row in dataset:
        labels = row["labels"]
        starts, position = {0}, 0
        for length in row.get("seq_lengths") or [len(labels)]:
            starts.add(position)
            position += length
        total += sum(1 for i, label in enumerate(labels) if label != -100 and i not in starts)
    return total


def _trainer_class():
    """SFTTrainer that counts, per optimiser step, the real and the loss-bearing tokens it trains."""
    import torch
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        step_tokens = torch.zeros(2, dtype=torch.long)  # (real tokens, loss-bearing tokens) since the last step

        def compute_loss(self, model, inputs, *args, **kwargs):
            if model.training:
                labels = inputs["labels"]
                real = inputs["attention_mask"].sum() if "attention_mask" in inputs else labels.numel()
                self.step_tokens += torch.stack([torch.as_tensor(real), (labels[:, 1:] != -100).sum()]).cpu()
            return super().compute_loss(model, inputs, *args, **kwargs)

    return CountingSFTTrainer


def _step_printer(trainer):
    """A callback that prints verl's step line on rank 0: the loss and the whole step's token counts."""
    import torch
    import torch.distributed as dist
    from transformers import TrainerCallback

    class StepPrinter(TrainerCallback):
        counted = None

        def on_step_end(self, args, state, control, **kwargs):
            counts = trainer.step_tokens.clone()
            trainer.step_tokens.zero_()
            if dist.is_available() and dist.is_initialized():
                dist.all_reduce(counts)
            self.counted = counts.tolist()

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs and "loss" in logs and self.counted:
                tokens, loss_tokens = self.counted
                print(f"step:{state.global_step} - train/loss:{logs['loss']:.6f} train/global_tokens:{tokens} "
                      f"train/loss_tokens:{loss_tokens}", flush=True)

    return StepPrinter()


def train(args: argparse.Namespace) -> None:
    import torch
    from datasets import Dataset
    from trl import SFTConfig

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    order = verl_sample_order(args.samples, world, args.train_batch_size, args.steps)
    ids, masks = encode_samples(args.train_file, args.model, args.max_length, order)
    per_step = args.micro_batch * world
    accumulation = max(1, round(args.train_batch_size / per_step)) if not args.packing else args.accumulation
    config = SFTConfig(
        output_dir=args.output_dir, per_device_train_batch_size=args.micro_batch,
        gradient_accumulation_steps=accumulation, max_steps=args.steps, learning_rate=1e-5,
        lr_scheduler_type="cosine", warmup_steps=0, weight_decay=0.01, logging_steps=1, save_strategy="no",
        report_to="none", bf16=args.precision == "bf16", fp16=False, gradient_checkpointing=False,
        use_cpu=args.device == "cpu",
        dataloader_num_workers=0, train_sampling_strategy="sequential", disable_tqdm=True, seed=42,
        max_length=args.max_length, packing=args.packing, packing_strategy="bfd", padding_free=args.packing,
        model_init_kwargs={"dtype": torch.float32, "attn_implementation": args.attention},
        ddp_backend="gloo" if world > 1 and args.device == "cpu" else None)
    trainer_class = _trainer_class()
    trainer = trainer_class(model=args.model, args=config,
                            train_dataset=Dataset.from_dict({"input_ids": ids, "assistant_masks": masks}))
    ours, theirs = ours_loss_tokens(masks), trl_loss_tokens(trainer.train_dataset)
    if rank == 0:
        print(f"[trl-run] {len(ids)} samples, {sum(map(len, ids))} tokens; loss-bearing tokens: ours {ours}, "
              f"TRL {theirs}; micro batch {args.micro_batch}{' packed rows' if args.packing else ''} x "
              f"{accumulation} accumulation x {world} processes", flush=True)
    if ours != theirs:
        raise SystemExit(f"[trl-run] TRL would train {theirs} loss-bearing tokens, ours {ours}: not the same data")
    trainer.add_callback(_step_printer(trainer))
    trainer.train()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="model directory (the benchmark's random-weight model)")
    parser.add_argument("--train-file", required=True, help="Parquet file of sft/prepare_data.py")
    parser.add_argument("--output-dir", required=True, help="TRL's output directory (nothing is saved)")
    parser.add_argument("--samples", type=int, required=True, help="rows in --train-file (verl's sampler draws from)")
    parser.add_argument("--train-batch-size", type=int, default=32, help="global batch in samples, as ours")
    parser.add_argument("--steps", type=int, default=4, help="optimiser steps")
    parser.add_argument("--micro-batch", type=int, default=1,
                        help="samples per micro batch (padded to the longest); with --packing: packed rows")
    parser.add_argument("--accumulation", type=int, default=1,
                        help="--packing only: micro batches per optimiser step (without packing it is the global "
                        "batch over micro batch x processes)")
    parser.add_argument("--max-length", type=int, default=4096, help="longest sample; with --packing the row length")
    parser.add_argument("--packing", action="store_true", help="TRL's best-fit-decreasing packing, padding-free")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to train")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="fp32, or bf16 mixed precision (fp32 weights), as our COMPUTE_DTYPE")
    parser.add_argument("--attention", default="sdpa", help="attn_implementation, as our ATTN_IMPLEMENTATION")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    try:
        import trl  # noqa: F401
    except ImportError:
        print(f"error: {TRL_INSTALL_HINT}", file=sys.stderr)
        return 2
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
