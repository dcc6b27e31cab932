#!/usr/bin/env python3
"""Download every wheel the project needs into one folder, for a machine without internet (torch excluded).

Usage (on a machine with internet; pip downloads for the target, whatever this machine is):
    scripts/build_wheelhouse.py -o wheelhouse                           # this machine's Python and platform
    scripts/build_wheelhouse.py -o wheelhouse-py312 --python-version 3.12 --platform manylinux_2_28_x86_64
    scripts/build_wheelhouse.py -o wheelhouse --slim --torch-version 2.6.0 --gpu-extras
    scripts/build_wheelhouse.py -o wheelhouse --dry-run                 # print the pip commands only
Then copy the folder to the offline machine and, in the repository there:
    WHEELHOUSE=wheelhouse scripts/setup_env.sh     # no index; the machine's own (CUDA) torch is kept

torch is never downloaded: clusters provide a CUDA build that matches their drivers. While pip
resolves, torch is stood in for by an empty wheel `torch-<--torch-version>+provided` (so its
CUDA libraries are not pulled in, and a dependency that refuses that torch version stops the
build here, not on the cluster), and so is triton, which comes with every CUDA torch on Linux;
the stand-ins are not kept. Every requirement of every wheel
that names torch is written to wheelhouse.json (`torch_requirements`), and setup_env.sh checks
the installed torch against them before installing anything.

--slim leaves out what verl 0.9.1 declares but its SFT trainer never imports (measured: the
modules loaded by a training process): wandb, tensorboard and ray's [default] extra (ray
itself is imported by verl.protocol, so its core wheel stays). LOGGER=wandb or tensorboard then
needs those packages; the default wheelhouse has everything requirements.txt installs.

Packages published only as source (antlr4-python3-runtime, which hydra-core pins) are built
into wheels here first; that works for pure-Python ones, and a package that would compile is
refused with the fix. flash-attn is not on PyPI as a wheel (it compiles against the installed
torch and CUDA): put a prebuilt wheel matching the cluster's torch, CUDA and Python into the
folder by hand (https://github.com/Dao-AILab/flash-attention/releases); --gpu-extras adds
liger-kernel (its torch and triton come with the cluster's torch).

The folder gets requirements.lock (name==version of every wheel, installed with --no-deps so
nothing else is resolved offline) and wheelhouse.json (target, torch requirements, sizes).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import platform
import re
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROVIDED = "+provided"  # local version label of the stand-in wheels (never kept)
# Declared by verl 0.9.1 but not imported by a training process with LOGGER=console (--slim).
SLIM_LEFT_OUT = ("wandb", "tensorboard")
SLIM_WITHOUT_EXTRAS = {"ray": "default"}  # verl.protocol imports ray; its [default] extra is a dashboard
IMPORT_CHECK = ("verl.trainer.sft_trainer", "transformers", "peft", "pyarrow", "hydra", "math_verify", "matplotlib")
_NEVER_DOWNLOADED = ("torch", "flash-attn", "flash_attn")
_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(files: list[Path]) -> list[str]:
    """The requirement lines of `files` without comments, torch and flash-attn."""
    lines = []
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            match = _NAME.match(line)
            if match and canonical(match.group(1)) not in {canonical(n) for n in _NEVER_DOWNLOADED}:
                lines.append(line)
    return lines


def platform_tags(platform_tag: str) -> list[str]:
    """A manylinux_2_X tag and every older one a machine of that glibc accepts (pip does not widen a --platform)."""
    match = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", platform_tag)
    if not match:
        return [platform_tag]
    glibc, arch = int(match.group(1)), match.group(2)
    tags = [f"manylinux_2_{minor}_{arch}" for minor in range(glibc, 4, -1)]
    return tags + [f"{alias}_{arch}" for alias, minor in (("manylinux2014", 17), ("manylinux2010", 12),
                                                          ("manylinux1", 5)) if glibc >= minor]


def this_platform() -> str:
    """This machine's manylinux tag (glibc version and architecture), or its plain platform tag."""
    libc, version = platform.libc_ver()
    machine = platform.machine()
    if sys.platform == "linux" and libc == "glibc" and version:
        major, minor = version.split(".")[:2]
        return f"manylinux_{major}_{minor}_{machine}"
    return sysconfig.get_platform().replace("-", "_").replace(".", "_")


def target_options(python_version: str, platform_tag: str) -> list[str]:
    abi = "cp" + python_version.replace(".", "")
    options = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp", "--abi", abi]
    for tag in platform_tags(platform_tag):
        options += ["--platform", tag]
    return options


def write_stand_in(directory: Path, name: str, version: str, extras: tuple[str, ...] = ()) -> Path:
    """An empty wheel `name==version` (no files, no dependencies) that satisfies pip's resolver."""
    info = f"{canonical(name).replace('-', '_')}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Provides-Extra: {extra}\n" for extra in extras)
    files = {f"{info}/METADATA": metadata,
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: verl-sft\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b'=').decode()},"
                     f"{len(text.encode())}\n" for path, text in files.items()) + f"{info}/RECORD,,\n"
    files[f"{info}/RECORD"] = record
    wheel = directory / f"{canonical(name).replace('-', '_')}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return wheel


def wheel_metadata(wheel: Path) -> dict:
    """Name, version and Requires-Dist lines of a wheel file."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = archive.read(name).decode("utf-8", errors="replace")
    headers = text.split("\n\n", 1)[0].splitlines()
    value = lambda key: [h.split(":", 1)[1].strip() for h in headers if h.lower().startswith(key.lower() + ":")]
    return {"name": value("Name")[0], "version": value("Version")[0], "requires": value("Requires-Dist")}


def torch_requirements(wheels: list[Path]) -> dict[str, str]:
    """{"package version": its requirement on torch} for every wheel that requires torch outside an extra."""
    found = {}
    for wheel in wheels:
        meta = wheel_metadata(wheel)
        for requirement in meta["requires"]:
            spec, _, marker = requirement.partition(";")
            match = _NAME.match(spec)
            if match and canonical(match.group(1)) == "torch" and "extra" not in marker:
                found[f"{meta['name']} {meta['version']}"] = spec.strip()
    return found


def stand_ins(args: argparse.Namespace) -> dict[str, tuple[str, tuple[str, ...]]]:
    """{name: (version, extras)} of the packages pip must take as given while resolving (never downloaded)."""
    # triton ships with every CUDA torch on Linux (torch requires it there); liger-kernel asks for it too.
    given = {"torch": (args.torch_version + PROVIDED, ()), "triton": ("9999" + PROVIDED, ())}
    if args.slim:  # a version any requirement of verl's accepts
        given.update({name: ("9999" + PROVIDED, ()) for name in SLIM_LEFT_OUT})
        given.update({name: ("9999" + PROVIDED, (extra,)) for name, extra in SLIM_WITHOUT_EXTRAS.items()})
    return given


def sources_to_build(pip: list[str], work: Path, requirements: Path, constraints: Path, links: list[Path]) -> list[str]:
    """name==version of what pip would take as a source archive (resolved for this machine, metadata only)."""
    report = work / "report.json"
    command = pip + ["install", "--dry-run", "--quiet", "--ignore-installed", "--report", str(report), "--target",
                     str(work / "target"), "-c", str(constraints), "-r", str(requirements)]
    for link in links:
        command += ["--find-links", str(link)]
    subprocess.run(command, check=True)
    installs = json.loads(report.read_text())["install"]
    return [f"{i['metadata']['name']}=={i['metadata']['version']}" for i in installs
            if not i["download_info"]["url"].endswith(".whl")]


def build_pure_wheels(pip: list[str], pins: list[str], dest: Path, work: Path) -> None:
    """Wheels of source-only packages, refused unless pure Python (then they fit every platform)."""
    built = work / "built"
    for pin in pins:
        subprocess.run(pip + ["wheel", "--quiet", "--no-deps", "-w", str(built), pin], check=True)
    for wheel in built.glob("*.whl"):
        if not wheel.name.endswith("-none-any.whl"):
            raise SystemExit(f"error: {wheel.name} is published as source only and compiles: build it on a machine "
                             f"like the target (pip wheel --no-deps {wheel.name.split('-')[0]}) and put it in {dest}.")
        wheel.replace(dest / wheel.name)


def _without_extras(dest: Path) -> list[str]:
    """verl's own requirement on each --slim package kept without its extra (ray>=2.41.0 for ray[default]>=...)."""
    verl = next(dest.glob("verl-*.whl"))
    wanted = []
    for requirement in wheel_metadata(verl)["requires"]:
        spec, _, marker = requirement.partition(";")
        match = _NAME.match(spec)
        if match and canonical(match.group(1)) in SLIM_WITHOUT_EXTRAS and "extra" not in marker:
            wanted.append(re.sub(r"\[.*?\]", "", spec).strip())
    return wanted


def commands(args: argparse.Namespace, work: Path) -> tuple[list[str], list[str], Path, Path, list[Path]]:
    """(pip, the target download command, its requirements and constraints files, stand-in folders)."""
    pip = [sys.executable, "-m", "pip"]
    files = [REPO_ROOT / "requirements.txt"] + ([REPO_ROOT / "requirements-gpu.txt"] if args.gpu_extras else [])
    requirements, constraints = work / "requirements.txt", work / "constraints.txt"
    requirements.write_text("\n".join(requirement_lines(files)) + "\n")
    given = stand_ins(args)
    constraints.write_text("".join(f"{name}=={version}\n" for name, (version, _) in given.items()))
    links = []
    for name, (version, extras) in given.items():
        folder = work / "stand-ins" / name
        folder.mkdir(parents=True, exist_ok=True)
        write_stand_in(folder, name, version, extras)
        links.append(folder)
    download = pip + ["download", "--quiet", "-d", str(args.output), "--find-links", str(args.output),
                      *target_options(args.python_version, args.platform), "-c", str(constraints), "-r",
                      str(requirements)]
    for link in links:
        download += ["--find-links", str(link)]
    return pip, download, requirements, constraints, links


def write_lock(args: argparse.Namespace, dest: Path, command: list[str]) -> dict:
    """requirements.lock and wheelhouse.json from the wheels in `dest` (stand-ins removed first)."""
    for stand_in in dest.glob(f"*{PROVIDED}*.whl"):
        stand_in.unlink()
    wheels = sorted(dest.glob("*.whl"))
    metadata = {wheel.name: wheel_metadata(wheel) for wheel in wheels}
    by_name: dict[str, list[str]] = {}
    for file_name, meta in metadata.items():
        by_name.setdefault(canonical(meta["name"]), []).append(file_name)
    twice = {name: files for name, files in by_name.items() if len(files) > 1}
    if twice:
        raise SystemExit(f"error: {dest} holds several versions of {', '.join(twice)} ({twice}); remove the older "
                         "files (or the folder) and build again")
    lock = sorted(f"{canonical(m['name'])}=={m['version']}" for m in metadata.values())
    (dest / "requirements.lock").write_text("".join(line + "\n" for line in lock))
    left_out = [*SLIM_LEFT_OUT, *(f"{name}[{extra}]'s extra packages" for name, extra in SLIM_WITHOUT_EXTRAS.items())]
    info = {"built": time.strftime("%Y-%m-%d"), "command": shlex.join(command), "python_version": args.python_version,
            "platform": args.platform, "platform_tags": platform_tags(args.platform),
            "resolved_with_torch": args.torch_version, "torch_requirements": torch_requirements(wheels),
            "slim": args.slim, "left_out": left_out if args.slim else [], "imports": list(IMPORT_CHECK),
            "total_bytes": sum(w.stat().st_size for w in wheels),
            "wheels": {w.name: w.stat().st_size for w in sorted(wheels, key=lambda w: -w.stat().st_size)}}
    (dest / "wheelhouse.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def print_summary(info: dict, dest: Path) -> None:
    mb = 1e6
    print(f"[wheelhouse] {dest}: {len(info['wheels'])} wheels, {info['total_bytes'] / mb:.1f} MB for Python "
          f"{info['python_version']} on {info['platform']}{' (--slim)' if info['slim'] else ''}; torch not included")
    for name, size in list(info["wheels"].items())[:8]:
        print(f"[wheelhouse]   {size / mb:7.1f} MB  {name}")
    print("[wheelhouse] torch requirements of these packages (setup_env.sh checks the installed torch against them): "
          + "; ".join(f"{package}: {spec}" for package, spec in info["torch_requirements"].items()))
    print(f"[wheelhouse] offline install: WHEELHOUSE={dest} scripts/setup_env.sh")


def check_torch(wheelhouse: Path) -> int:
    """setup_env.sh, before installing from `wheelhouse`: this Python fits it and its torch meets every requirement.

    Run by the interpreter that will get the wheels; uses the standard library and pip's own
    copy of `packaging` only (nothing of the project is installed yet).
    """
    from importlib import metadata

    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare Python with a CUDA torch: pip carries packaging
        from pip._vendor.packaging.requirements import Requirement

    info = json.loads((wheelhouse / "wheelhouse.json").read_text())
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    if here != info["python_version"]:
        print(f"error: {wheelhouse} was built for Python {info['python_version']}, and {sys.executable} is {here}. "
              f"Build one for {here}: scripts/build_wheelhouse.py --python-version {here} ...", file=sys.stderr)
        return 1
    try:
        version = metadata.version("torch")
    except metadata.PackageNotFoundError:
        print(f"error: no torch in {sys.executable}. The wheelhouse leaves torch to the machine: create the "
              "environment on top of the Python that has it (setup_env.sh does, with --system-site-packages; "
              "PYTHON=/path/to/that/python), or install torch there first.", file=sys.stderr)
        return 1
    refused = [f"{package} needs {spec}" for package, spec in info["torch_requirements"].items()
               if not Requirement(spec).specifier.contains(version, prereleases=True)]
    if refused:
        print(f"error: the installed torch {version} is refused by: {'; '.join(refused)}. Install a torch they "
              "accept (kept as it is: the wheelhouse never replaces torch).", file=sys.stderr)
        return 1
    print(f"[setup] torch {version} (kept) meets {'; '.join(info['torch_requirements'].values()) or 'no requirement'}")
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog="Details: the top of this file.",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-o", "--output", type=Path, default=REPO_ROOT / "wheelhouse", help="the folder to fill")
    parser.add_argument("--python-version", default=f"{sys.version_info.major}.{sys.version_info.minor}",
                        help="the target's Python, major.minor")
    parser.add_argument("--platform", default=this_platform(),
                        help="the target's platform tag, e.g. manylinux_2_28_x86_64 (glibc 2.28+, x86-64: most "
                        "clusters), manylinux_2_17_aarch64; older manylinux tags are added")
    parser.add_argument("--torch-version", default="2.13.0",
                        help="the target's torch (resolved against, never downloaded): a dependency that refuses it "
                        "stops the build")
    parser.add_argument("--slim", action="store_true",
                        help=f"leave out {', '.join(SLIM_LEFT_OUT)} and ray's [default] extra (not imported by SFT "
                        "training with LOGGER=console)")
    parser.add_argument("--gpu-extras", action="store_true", help="add requirements-gpu.txt (liger-kernel; "
                        "flash-attn must be added as a prebuilt wheel)")
    parser.add_argument("--dry-run", action="store_true", help="print the pip commands and exit")
    parser.add_argument("--check-torch", type=Path, metavar="WHEELHOUSE",
                        help="(setup_env.sh) check this Python and its torch against WHEELHOUSE, install nothing")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"3\.\d+", args.python_version):
        parser.error(f"--python-version {args.python_version}: give major.minor, e.g. 3.12")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_torch:
        return check_torch(args.check_torch)
    with tempfile.TemporaryDirectory(prefix="wheelhouse-") as temporary:
        work = Path(temporary)
        pip, download, requirements, constraints, links = commands(args, work)
        if args.dry_run:
            print(f"# requirements ({requirements.name}): {' '.join(requirements.read_text().split())}")
            print(f"# stand-ins (resolved against, not kept): {' '.join(constraints.read_text().split())}")
            print(shlex.join(download))
            return 0
        args.output.mkdir(parents=True, exist_ok=True)
        start = time.monotonic()
        build_pure_wheels(pip, sources_to_build(pip, work, requirements, constraints, links), args.output, work)
        subprocess.run(download, check=True)
        if args.slim:
            # ray without its extra, its dependencies held to the versions the first pass chose.
            pins = work / "first-pass.txt"
            pins.write_text("".join(f"{m['name']}=={m['version']}\n" for m in map(wheel_metadata, args.output.glob("*.whl"))
                                    if PROVIDED not in m["version"]))
            torch_only = [item for link in links if link.name == "torch" for item in ("--find-links", str(link))]
            subprocess.run(pip + ["download", "--quiet", "-d", str(args.output), *target_options(
                args.python_version, args.platform), *torch_only, "-c", str(pins),
                *_without_extras(args.output)], check=True)
        info = write_lock(args, args.output, [sys.argv[0], *(sys.argv[1:] if argv is None else argv)])
    print_summary(info, args.output)
    print(f"[wheelhouse] built in {time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
