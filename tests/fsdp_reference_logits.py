"""Reference logits of a trained verl FSDP checkpoint, computed without verl's merger or sft.export.

Usage (tests/test_export.py runs it; one process per FSDP rank of the checkpoints):
    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/fsdp_reference_logits.py JOBS.json

JOBS.json is a list of {"step_dir", "input_ids" (a .pt LongTensor [batch, seq]), "output" (where
rank 0 saves float32 logits [batch, seq, vocab]), "lora_rank" (0 = full fine-tune), "lora_alpha"};
one launch serves several checkpoints because starting the processes costs more than the work.

Each rank loads its own `model_world_size_W_rank_R.pt`, and DTensor.full_tensor() all-gathers
every parameter over gloo, so the full state dict comes from torch's own sharding metadata
rather than from concatenating files. Rank 0 then rebuilds the model from the checkpoint's
`huggingface/config.json` in float32. For LoRA it wraps the model with PEFT using the LoRA
settings the test trained with (not the ones the checkpoint records) and runs it with the
adapters unmerged, so the LoRA arithmetic is independent of the export's merge step too.
"""

from __future__ import annotations

import argparse
import json
import logging

import torch
import torch.distributed as dist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("jobs", help="JSON list of {step_dir, input_ids, output, lora_rank, lora_alpha}")
    jobs = json.loads(open(parser.parse_args().jobs).read())

    logging.getLogger("torch.distributed.device_mesh").setLevel(logging.ERROR)
    dist.init_process_group("gloo")
    for job in jobs:
        reference_logits(argparse.Namespace(**job))
    dist.barrier()  # leave gloo together: a rank tearing it down under the other can abort at exit
    dist.destroy_process_group()


def reference_logits(args: argparse.Namespace) -> None:
    rank, world_size = dist.get_rank(), dist.get_world_size()
    shard = torch.load(f"{args.step_dir}/model_world_size_{world_size}_rank_{rank}.pt", map_location="cpu", weights_only=False)
    full = {key: (value.full_tensor() if hasattr(value, "full_tensor") else value) for key, value in sorted(shard.items())}
    if rank == 0:
        from transformers import AutoConfig, AutoModelForCausalLM

        config = AutoConfig.from_pretrained(f"{args.step_dir}/huggingface")
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        if args.lora_rank:
            from peft import LoraConfig, TaskType, get_peft_model

            model = get_peft_model(
                model,
                LoraConfig(task_type=TaskType.CAUSAL_LM, r=args.lora_rank, lora_alpha=args.lora_alpha,
                           target_modules="all-linear", bias="none"),
            )
        full = {key: value.float() for key, value in full.items()}
        result = model.load_state_dict(full, strict=False)
        # Tied embeddings: the checkpoint holds embed_tokens only; lm_head is the same tensor.
        missing = [k for k in result.missing_keys if not k.endswith("lm_head.weight")]
        if missing or result.unexpected_keys:
            raise SystemExit(f"state dict mismatch: missing {missing}, unexpected {result.unexpected_keys}")
        model.eval()
        input_ids = torch.load(args.input_ids)
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits.float()
        torch.save(logits, args.output)
        print(f"reference logits {tuple(logits.shape)} from {len(full)} tensors")
    dist.barrier()


if __name__ == "__main__":
    main()
