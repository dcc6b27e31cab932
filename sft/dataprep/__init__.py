"""sft/prepare_data.py's machinery: options, JSONL reading, the scan in worker processes, the spill, the write pass."""
