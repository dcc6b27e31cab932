"""The training dataset with every sample padded to data.max_length: the original design's cost model.

Usage (scripts/benchmark_training.py's `original` configuration does this):
    scripts/run_sft_training.sh data.custom_cls.path=$PWD/sft/bench/padded_dataset.py \\
        data.custom_cls.name=PadToMaxLengthDataset data.use_dynamic_bsz=False model.use_remove_padding=False

The original design trained with verl's old trainer, which right-padded every sample to
`data.max_length`. verl 0.9.1's engine accepts only unpadded (nested) samples, so this dataset
(the launchers' own, sft/verl_plugins/sft_dataset.py, so that padding is the only difference) appends
`max_length - len` pad tokens to each sample with a zero loss mask and continuing
position ids. Training is unchanged (the pads come after every real token, so causal attention
never lets a real token see them, and they carry no loss), while the compute is that of padding
to max_length. Only for benchmarking; never use it to train.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

if __package__ in (None, ""):  # loaded by file path (verl's load_extern_object): make `import sft.x` work
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from sft.verl_plugins.sft_dataset import ChatTemplateSFTDataset


class PadToMaxLengthDataset(ChatTemplateSFTDataset):
    def __getitem__(self, item):
        sample = super().__getitem__(item)
        length = sample["input_ids"].shape[0]
        missing = self.max_length - length
        if missing <= 0:
            return sample
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        sample["input_ids"] = torch.cat([sample["input_ids"], torch.full((missing,), pad_id, dtype=sample["input_ids"].dtype)])
        sample["loss_mask"] = torch.cat([sample["loss_mask"], torch.zeros(missing, dtype=sample["loss_mask"].dtype)])
        position_ids = sample["position_ids"]
        sample["position_ids"] = torch.cat([position_ids, torch.arange(length, length + missing, dtype=position_ids.dtype)])
        return sample
