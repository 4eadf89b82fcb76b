#!/usr/bin/env python3
"""Write and check the install locks, each under the interpreter that will install it (stdlib only).

    python3.12 scripts/locks.py write-gpu              # re-resolve requirements-gpu.in and rewrite requirements-gpu.lock
    python3 scripts/locks.py check PY [PY ...]         # both locks must resolve, exactly as pinned, under every PY

Why the interpreter itself: pip evaluates environment markers for the Python that runs it. ``--python-version
3.12`` from a 3.11 pip still read vllm's ``setuptools<81; python_version > "3.11"`` as false and called the GPU
lock fine; pip run by CPython 3.12 ended in ResolutionImpossible (docs/DISTRIBUTED.md, "Install locks").

Every pip here runs ``--isolated --dry-run --ignore-installed --report`` against PyPI: metadata only, nothing is
installed, and a local CPU wheel folder or pip.conf constraints do not change the answer. ``check`` passes when
pip resolves ``-c LOCK -r LOCK`` and the report installs exactly the lock's pins (a package the lock misses on
that Python, e.g. a backport only older versions need, is a failure too: it would install unpinned). For each
(lock, Python) it writes the pip log to ``lock-check/`` and prints the log's last line.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CPU_LOCK, GPU_IN, GPU_LOCK = ROOT / "requirements.lock", ROOT / "requirements-gpu.in", ROOT / "requirements-gpu.lock"
LOCKS = {"cpu": CPU_LOCK, "gpu": GPU_LOCK}
# PyPI's torch 2.13.0 is the CUDA 13 build: resolving the CPU lock against PyPI (this check) pulls its CUDA runtime,
# which the CPU lock does not pin because the CPU wheel it is installed with (torch's CPU index / a local wheel
# folder, unreachable from --isolated) needs none. Those, and only those, are set aside for the CPU lock.
CUDA_RUNTIME = re.compile(r"^(nvidia-.*|cuda-.*|triton)$")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(text: str) -> dict[str, str]:
    """``name -> version`` of every ``name==version`` line (comments and markers ignored)."""
    out = {}
    for line in text.splitlines():
        line = line.split("#")[0].split(";")[0].strip()
        if line and not line.startswith("-"):
            name, _, version = line.partition("==")
            out[normalize(re.split(r"[\[<>=!~ ]", name, maxsplit=1)[0])] = version.strip()
    return out


def requires_python(pyproject: Path = ROOT / "pyproject.toml") -> tuple[int, int, int]:
    """(lowest minor, highest minor + 1 or 0) of ``requires-python = ">=3.X,<3.Y"``: the Pythons the project claims."""
    m = re.search(r'^requires-python\s*=\s*">=3\.(\d+)(?:,\s*<3\.(\d+))?"', pyproject.read_text(), re.M)
    if not m:
        raise SystemExit(f"{pyproject}: expected requires-python = \">=3.X,<3.Y\"")
    return 3, int(m.group(1)), int(m.group(2) or 0)


def claimed_minors(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    _, low, high = requires_python(pyproject)
    return [f"3.{m}" for m in range(low, high or low + 1)]


def pip_command(python: str, report: Path, *requirements: str) -> list[str]:
    """The dry run: metadata only, against PyPI, for ``python`` itself. DS_BUILD_OPS=0 goes in the environment."""
    return [python, "-m", "pip", "install", "--isolated", "--dry-run", "--ignore-installed", "--progress-bar", "off",
            "--disable-pip-version-check", "--report", str(report), *requirements]


def run_pip(command: list[str], log: Path) -> int:
    env = {**os.environ, "DS_BUILD_OPS": "0"}  # deepspeed's metadata build must not try to compile its ops
    if os.environ.get("PIP_CERT"):
        command = [*command, "--cert", os.environ["PIP_CERT"]]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as out:
        return subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env).returncode


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    if not lines:
        return "(empty log)"
    words = lines[-1].split()  # pip's "Would install A-1 B-2 ..." names every package: count them instead
    return lines[-1] if len(words) <= 12 else f"{' '.join(words[:6])} ... {words[-1]} ({len(words) - 2} packages)"


def report_pins(report: Path) -> dict[str, str]:
    data = json.loads(report.read_text())
    return {normalize(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def compare(locked: dict[str, str], resolved: dict[str, str]) -> list[str]:
    """What the resolution does differently from the lock (empty: it installs exactly the lock)."""
    problems = [f"{n}: lock {v}, resolved {resolved[n]}" for n, v in locked.items() if n in resolved
                and resolved[n] != v]
    problems += [f"{n}=={v}: resolved but not in the lock (would install unpinned)" for n, v in resolved.items()
                 if n not in locked]
    return problems  # a lock pin not installed is fine: its marker excludes this Python


def interpreter_version(python: str) -> str:
    return subprocess.run([python, "-c", "import platform; print(platform.python_version())"], check=True,
                          capture_output=True, text=True).stdout.strip()


def check(pythons: list[str], out_dir: Path, which: list[str]) -> int:
    """Resolve each lock under each interpreter; print one verdict line per pair; non-zero if any fails."""
    failed = 0
    for python in pythons:
        version = interpreter_version(python)
        for kind in which:
            lock = LOCKS[kind]
            log, report = out_dir / f"{kind}-{version}.log", out_dir / f"{kind}-{version}.json"
            code = run_pip(pip_command(python, report, "-c", str(lock), "-r", str(lock)), log)
            resolved = report_pins(report) if not code else {}
            runtime = sorted(n for n in resolved if kind == "cpu" and CUDA_RUNTIME.match(n))
            problems = [f"pip exited {code}"] if code else \
                compare(pins(lock.read_text()), {n: v for n, v in resolved.items() if n not in runtime})
            failed += bool(problems)
            verdict = "OK" if not problems else "FAILED: " + "; ".join(problems[:5])
            if runtime and not problems:
                verdict += (f", exactly as pinned but for the {len(runtime)} CUDA runtime wheels of PyPI's torch "
                            f"({runtime[0]} ... {runtime[-1]}; the CPU wheel `make install` takes has none)")
            print(f"{lock.name} under CPython {version}: {verdict}\n    last line of {log}: {last_line(log)}",
                  flush=True)
    return 1 if failed else 0


def gpu_base(cpu_lock: str, gpu_in: str) -> str:
    """requirements.lock without the packages requirements-gpu.in re-pins."""
    repinned = set(pins(gpu_in))
    keep = [line for line in cpu_lock.splitlines(keepends=True)
            if not line.strip() or line.startswith("#") or normalize(re.split(r"[=<>!~ ;\[]", line.strip(), 1)[0])
            not in repinned]
    return "".join(keep)


def write_gpu(out_dir: Path) -> int:
    """Resolve requirements-gpu.in against requirements.lock for this interpreter and rewrite requirements-gpu.lock."""
    version = ".".join(map(str, sys.version_info[:2]))
    if version not in claimed_minors():
        raise SystemExit(f"locks.py: CPython {version} is not a Python pyproject.toml claims ({claimed_minors()})")
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.txt"
        base.write_text(gpu_base(CPU_LOCK.read_text(), GPU_IN.read_text()))
        report, log = Path(tmp) / "report.json", out_dir / f"write-gpu-{platform_version()}.log"
        code = run_pip(pip_command(sys.executable, report, "-c", str(base), "-r", str(base), "-r", str(GPU_IN)), log)
        print(f"last line of {log}: {last_line(log)}")
        if code:
            return code
        env = json.loads(report.read_text())["environment"]
        resolved = report_pins(report)
    names = {normalize(i): i for i in resolved}
    GPU_LOCK.write_text(
        "# GENERATED by scripts/locks.py write-gpu from requirements.lock + requirements-gpu.in; do not edit.\n"
        f"# Resolved by CPython {env['python_full_version']} ({env['platform_system']} {env['platform_machine']});"
        f" checked under every claimed Python by `make gpu-lock CHECK=1`. Install: make install-gpu\n"
        + "".join(f"{names[n]}=={resolved[n]}\n" for n in sorted(resolved)))
    for name in ("torch", "transformers", "trl", "vllm", "deepspeed", "numpy", "setuptools"):
        print(f"{name}=={resolved.get(name)}")
    print(f"resolved {len(resolved)} packages under CPython {env['python_full_version']}; wrote {GPU_LOCK.name}")
    return 0


def platform_version() -> str:
    import platform

    return platform.python_version()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/locks.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("write-gpu", help="re-resolve requirements-gpu.in under this interpreter, rewrite the lock")
    w.add_argument("--logs", type=Path, default=ROOT / "lock-check")
    c = sub.add_parser("check", help="resolve the locks under each interpreter given")
    c.add_argument("pythons", nargs="+", help="interpreters (paths), one per claimed Python version")
    c.add_argument("--locks", default="cpu,gpu", help="which locks: cpu,gpu")
    c.add_argument("--logs", type=Path, default=ROOT / "lock-check")
    args = parser.parse_args(argv)
    if args.command == "write-gpu":
        return write_gpu(args.logs)
    return check(args.pythons, args.logs, [k for k in args.locks.split(",") if k])


if __name__ == "__main__":
    sys.exit(main())
