"""Export and evaluation at a real model shape: peak memory of sft/export.py, generation speed of sft/evaluate.py.

Usage:
    .venv/bin/python scripts/benchmark_export.py --shape qwen2.5-0.5b --mode full      # about 10 minutes on 2 cores
    .venv/bin/python scripts/benchmark_export.py --shape qwen2.5-1.5b --mode lora --no-eval
    .venv/bin/python scripts/benchmark_export.py --shape tiny --tokenizer tiny         # seconds: what the test runs
    .venv/bin/python scripts/benchmark_export.py --shape qwen2.5-1.5b --mode lora --no-eval \
        --checkpoint outputs/benchmark_export/runs/export-lora --same-weights-as outputs/old-export   # no training

It builds the shape with random weights and Qwen2.5's real 151k vocabulary (the same model and
synthetic data as scripts/benchmark_training.py, in the same --work-dir layout), trains one step
through the launcher with a checkpoint (scripts/run_sft_training.sh, or run_sft_peft.sh for
--mode lora), then runs `python -m sft.export` on that checkpoint and, unless --no-eval,
`python -m sft.evaluate` on the exported model with batched greedy generation of
--max-new-tokens tokens per held-out problem (random weights: the answers are wrong, the speed
is what is measured). --checkpoint exports an existing training output directory instead of
training (--shape and --mode then only label the results); --same-weights-as DIR then checks,
one tensor at a time, that the export's weights are bit-for-bit those of an earlier export DIR
(say, one made before a change to sft/export.py). Each command runs in its own process; its peak resident memory is sampled
every 0.2 s over the whole process tree (sft/bench/memory.py).

Printed: the model's size in bytes in its exported dtype, the export's peak memory and its ratio
to that size, the export's wall time, and the evaluation's output tokens/s (sft/evaluate.py's
own figure, summary.json) and peak memory. Results: <work dir>/export_results.json.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from sft.bench.memory import process_tree_rss  # noqa: E402
from sft.common.files import write_text_atomic  # noqa: E402

_spec = importlib.util.spec_from_file_location("benchmark_training", REPO_ROOT / "scripts" / "benchmark_training.py")
training = importlib.util.module_from_spec(_spec)
sys.modules["benchmark_training"] = training  # its dataclasses look their module up
_spec.loader.exec_module(training)


def run_measured(command: list[str], env: dict[str, str], log: Path, timeout: float) -> tuple[int, float, float]:
    """(exit code, peak RSS of the process tree in bytes, seconds) of `command`, its output in `log`."""
    peak = 0
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO_ROOT)

        def sample() -> None:
            nonlocal peak
            while process.poll() is None:
                peak = max(peak, process_tree_rss(process.pid))
                time.sleep(0.2)

        watcher = threading.Thread(target=sample, daemon=True)
        watcher.start()
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        watcher.join()
    return code, peak, time.monotonic() - started


def train_one_step(args: argparse.Namespace, model_dir: Path, train_file: Path, work: Path) -> Path:
    """A checkpoint after one optimiser step, through the launcher (full or LoRA); its output directory."""
    output_dir = work / "runs" / f"export-{args.mode}"
    script = "scripts/run_sft_peft.sh" if args.mode == "lora" else "scripts/run_sft_training.sh"
    env = {**os.environ, "PYTHON": sys.executable, "MODEL_NAME": str(model_dir), "TRAIN_FILE": str(train_file),
           "VAL_FILE": "", "OUTPUT_DIR": str(output_dir), "TRAIN_BATCH_SIZE": str(args.train_batch_size),
           "EPOCHS": "1", "DEVICE": args.device, "EXPERIMENT_NAME": f"benchmark-export-{args.mode}"}
    for key in ("DRY_RUN", "SFT_MODE"):
        env.pop(key, None)
    if output_dir.exists():
        import shutil

        shutil.rmtree(output_dir)
    code, peak, seconds = run_measured([str(REPO_ROOT / script), "trainer.total_training_steps=1",
                                        "trainer.save_freq=1"], env, work / f"train-{args.mode}.log", args.timeout)
    if code != 0:
        raise SystemExit(f"training failed (exit {code}); log: {work / f'train-{args.mode}.log'}")
    print(f"[benchmark] trained 1 step ({args.mode}) in {seconds:.0f} s, peak {peak / 2**30:.2f} GiB (all processes)",
          flush=True)
    return output_dir


def heldout_problems(work: Path, count: int) -> Path:
    path = work / "heldout.jsonl"
    subprocess.run([sys.executable, "-m", "sft.demo.synthetic_math", "-o", str(work / "problems.jsonl"), "--n", "10",
                    "--heldout-output", str(path), "--n-heldout", str(count)], check=True, cwd=REPO_ROOT,
                   stdout=subprocess.DEVNULL)
    return path


def model_bytes(model_dir: Path) -> tuple[int, str]:
    """Bytes of the weights as exported (the safetensors files), and their dtype."""
    config = json.loads((model_dir / "config.json").read_text())
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    return size, str(config.get("dtype") or config.get("torch_dtype"))


def export_and_evaluate(args: argparse.Namespace, checkpoints: Path, work: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    exported = work / f"exported-{args.mode}"
    code, export_peak, export_seconds = run_measured(
        [sys.executable, "-m", "sft.export", str(checkpoints), "-o", str(exported), "--force"], env,
        work / f"export-{args.mode}.log", args.timeout)
    if code != 0:
        raise SystemExit(f"export failed (exit {code}); log: {work / f'export-{args.mode}.log'}")
    size, dtype = model_bytes(exported)
    result = {"shape": args.shape, "mode": args.mode, "model_bytes": size, "dtype": dtype,
              "export_peak_bytes": export_peak, "export_peak_ratio": export_peak / size, "export_seconds": export_seconds}
    print(f"[benchmark] export: {size / 2**30:.2f} GiB of {dtype} weights, peak {export_peak / 2**30:.2f} GiB "
          f"({export_peak / size:.2f}x), {export_seconds:.0f} s", flush=True)
    if args.same_weights_as:
        differ = same_weights(exported, Path(args.same_weights_as))
        result["same_weights_as"] = {"reference": args.same_weights_as, "differing_tensors": differ}
        print(f"[benchmark] weights bit-for-bit identical to {args.same_weights_as}: "
              + ("yes" if not differ else f"NO, {len(differ)} differ: {', '.join(differ[:5])}"), flush=True)
    if args.no_eval:
        return result
    evaluation = work / f"eval-{args.mode}"
    command = [sys.executable, "-m", "sft.evaluate", str(exported), str(heldout_problems(work, args.problems)),
               "-o", str(evaluation), "--max-new-tokens", str(args.max_new_tokens), "--batch-size",
               str(args.batch_size), "--device", args.device, "--no-progress"]
    code, eval_peak, eval_seconds = run_measured(command, env, work / f"eval-{args.mode}.log", args.timeout)
    if code != 0:
        raise SystemExit(f"evaluation failed (exit {code}); log: {work / f'eval-{args.mode}.log'}")
    summary = json.loads((evaluation / "summary.json").read_text())
    result.update(eval_peak_bytes=eval_peak, eval_seconds=eval_seconds,
                  eval_output_tokens_per_second=summary.get("output_tokens_per_second"),
                  eval_problems=summary.get("num_graded"), eval_batch_size=args.batch_size)
    print(f"[benchmark] evaluation: {summary.get('output_tokens_per_second')} output tokens/s "
          f"({summary.get('num_graded')} problems, batch {args.batch_size}), peak {eval_peak / 2**30:.2f} GiB", flush=True)
    return result


def _tensor_files(model_dir: Path) -> dict[str, Path]:
    from safetensors import safe_open

    files = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            files.update((name, path) for name in handle.keys())
    return files


def same_weights(exported: Path, reference: Path) -> list[str]:
    """Names of the weights that differ (in dtype, shape or any bit) between two exports, or are in only one."""
    import torch
    from safetensors import safe_open

    ours, theirs = _tensor_files(exported), _tensor_files(reference)
    differ = sorted(set(ours) ^ set(theirs))
    for name in sorted(set(ours) & set(theirs)):
        # A handle per tensor, so the mapped pages of a whole model never stay resident.
        with safe_open(str(ours[name]), "pt") as a, safe_open(str(theirs[name]), "pt") as b:
            mine, other = a.get_tensor(name), b.get_tensor(name)
        if mine.dtype != other.dtype or mine.shape != other.shape or not torch.equal(
                mine.view(torch.uint8), other.view(torch.uint8)):
            differ.append(name)
    return differ


def format_row(r: dict) -> str:
    evaluation = (f"{r['eval_output_tokens_per_second']} | {r['eval_peak_bytes'] / 2**30:.2f}"
                  if "eval_peak_bytes" in r else "- | -")
    return (f"| {r['shape']} | {r['mode']} | {r['model_bytes'] / 2**30:.2f} ({r['dtype']}) | "
            f"{r['export_peak_bytes'] / 2**30:.2f} | {r['export_peak_ratio']:.2f}x | {r['export_seconds']:.0f} | "
            f"{evaluation} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--shape", choices=sorted(training.SHAPES), default="qwen2.5-0.5b", help="model shape")
    parser.add_argument("--tokenizer", choices=["qwen", "tiny"], default="qwen", help="vocabulary (as the training benchmark)")
    parser.add_argument("--mode", choices=["full", "lora"], default="full", help="how the checkpoint is trained")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="training and evaluation device")
    parser.add_argument("--rows", type=int, default=32, help="synthetic training rows")
    parser.add_argument("--max-length", type=int, default=512, help="longest training sample in tokens")
    parser.add_argument("--train-batch-size", type=int, default=2, help="samples in the one training step")
    parser.add_argument("--problems", type=int, default=8, help="held-out problems to evaluate")
    parser.add_argument("--batch-size", type=int, default=8, help="evaluation's prompts per generate() call")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per problem")
    parser.add_argument("--no-eval", action="store_true", help="export only")
    parser.add_argument("--checkpoint", default=None,
                        help="export this training output directory (or global_step_N) instead of training one step")
    parser.add_argument("--same-weights-as", default=None, metavar="DIR",
                        help="check that the exported weights are bit-for-bit those of the exported model in DIR")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per step before giving up")
    parser.add_argument("--work-dir", default=str(REPO_ROOT / "outputs" / "benchmark_export"), help="where everything goes")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    inputs = argparse.Namespace(shape=args.shape, tokenizer=args.tokenizer, rows=args.rows, median_words=60,
                                max_words=args.max_length // 3, max_length=args.max_length, seed=0)
    if args.checkpoint:
        checkpoints = Path(args.checkpoint)
        print(f"[benchmark] exporting the existing checkpoint {checkpoints} (no training)", flush=True)
    else:
        print(f"[benchmark] preparing the {args.shape} model and {args.rows} rows in {work}", flush=True)
        model_dir, train_file, _ = training.prepare_inputs(inputs, work)
        checkpoints = train_one_step(args, model_dir, train_file, work)
    result = export_and_evaluate(args, checkpoints, work)
    header = ("| shape | mode | model GiB (dtype) | export peak GiB | peak / model | export s | eval output tokens/s "
              "| eval peak GiB |\n|---|---|---:|---:|---:|---:|---:|---:|")
    table = header + "\n" + format_row(result)
    print("\n" + table)
    result.update(date=time.strftime("%Y-%m-%d"), command=" ".join(sys.argv), args=vars(args))
    write_text_atomic(work / "export_results.json", json.dumps(result, indent=2))
    print(f"\n[benchmark] results: {work / 'export_results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
