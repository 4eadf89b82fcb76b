"""The one error boundary of pathor1's command lines: a known problem is one line and exit status 2.

Known problems are the user's to fix, not bugs: a config (``ConfigError``), a run that cannot continue as asked
(``RunError``), a registry reference (``RegistryError``), data (``DataError``, a missing file), a missing optional
package (``PreflightError``), an unwritable ``$PATHOR1_HOME``, and whatever a CLI adds (``LaunchError``,
``SuiteError``...). Each prints ``prog: error: <message>`` -- the message names the file / field and the fix -- and
exits 2; anything else is a bug and keeps its traceback.

The order every training CLI follows (``run_cli``): config -> optional packages -> home writable -> run. The first
three take well under two seconds because this module and everything it imports at the top is light (no torch,
transformers, trl, peft): the stage's heavy imports happen inside its ``run``.
"""
from __future__ import annotations

import contextlib
import sys


def known_errors() -> tuple[type[BaseException], ...]:
    from corpora.records import DataError
    from stages.config import ConfigError
    from stages.preflight import PreflightError
    from stages.registry import RegistryError
    from stages.runs import RunError

    # HomeError is a RegistryError (stages.registry.check_writable)
    return ConfigError, RunError, RegistryError, DataError, PreflightError, FileNotFoundError


def one_line(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename:
        return f"{error.filename}: {error.strerror or 'cannot be read'}"
    from corpora.records import DataError

    lines = str(error).strip().splitlines()
    if isinstance(error, DataError) and len(lines) > 1:  # corpora.validate: a summary, then one file:line per problem
        more = f" (+{len(lines) - 2} more: python -m corpora.validate lists them)" if len(lines) > 2 else ""
        return lines[1].strip() + more
    return "\n".join(lines) or type(error).__name__


@contextlib.contextmanager
def error_boundary(prog: str, extra: tuple[type[BaseException], ...] = ()):
    """Turn a known error raised inside the block into ``prog: error: ...`` on stderr and ``SystemExit(2)``."""
    try:
        yield
    except (*known_errors(), *extra) as e:
        sys.stdout.flush()
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def run_cli(config_cls, run_fn, prog: str, argv: list[str] | None = None, *, extra=()) -> int:
    """The body of a training CLI: config, home, optional packages, then ``run_fn(cfg)`` inside the boundary;
    prints the returned registry folder last."""
    from stages.compat import offline_hub
    from stages.config import load_config_or_exit
    from stages.preflight import check_all as preflight
    from stages.registry import check_writable

    offline_hub()
    cfg = load_config_or_exit(config_cls, argv, prog=prog)
    with error_boundary(prog, extra):
        preflight(cfg)  # packages (bitsandbytes for 4-bit, deepspeed...) and a usable GPU where asked: nothing written
        check_writable()
        result = run_fn(cfg)
    if result is not None:
        print(result)
    preemption = sys.modules.get("stages.preemption")  # imported by the trainers; never imported here (transformers)
    return preemption.exit_code() if preemption is not None else 0  # 75: stopped by SIGTERM / SIGUSR1, checkpointed
