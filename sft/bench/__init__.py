"""Benchmark and test support: the original design's padded dataset, a local Qwen2.5 tokenizer."""
