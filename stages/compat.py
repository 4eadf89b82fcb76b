"""Environment fixes that must run before the heavy libraries are imported.

Why this exists: on CPU machines we install the CPU build of torch 2.13, but PyPI only has a CUDA build of
the matching torchvision 0.28. Its C extension cannot load there, and torchvision's meta registrations then
call ``torch.library.register_fake("torchvision::nms")`` on an operator that was never defined, so
``import torchvision`` raises ``operator torchvision::nms does not exist`` -- which breaks transformers'
Trainer, TRL, peft, timm and open_clip. We define the two operator schemas torchvision registers
unconditionally (nms, qnms) before it is first imported. Where the extension loads (GPU machines, matching
builds) we change nothing.

Installed two ways: ``install()`` is called by every pathor1 package ``__init__``, and the Makefile writes a
``.pth`` file into the virtualenv so that CLIs such as ``accelerate`` and ``torchrun`` get it too. The hook
is lazy: it imports nothing until something imports torchvision.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import sys
import time

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_state = {"fixed": False, "defined": False}


def _extension_loads(pkg_dir: str) -> bool:
    import torch

    for name in sorted(os.listdir(pkg_dir)):
        if name.startswith("_C") and name.endswith((".so", ".pyd")):
            try:
                torch.ops.load_library(os.path.join(pkg_dir, name))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def fix_torchvision() -> bool:
    """Define the missing operator schemas if torchvision's extension cannot load. Returns True if it did."""
    if _state["fixed"]:
        return _state["defined"]
    _state["fixed"] = True
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations or importlib.util.find_spec("torch") is None:
        return False
    if _extension_loads(list(spec.submodule_search_locations)[0]):
        return False
    import torch

    lib = torch.library.Library("torchvision", "FRAGMENT")
    for schema in _SCHEMAS.values():
        try:
            lib.define(schema)
        except RuntimeError:  # already defined by someone else: fine
            pass
    _LIBS.append(lib)  # a Library deregisters its ops when garbage collected
    _state["defined"] = True
    return True


_LIBS: list = []


class _TorchvisionHook(importlib.abc.MetaPathFinder):
    """Runs ``fix_torchvision`` the first time anything imports torchvision, then steps aside."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision":
            uninstall()
            fix_torchvision()
        return None  # the normal finders do the actual import


_HOOK = _TorchvisionHook()


def install() -> None:
    if "torchvision" in sys.modules:
        return  # too late to help, and nothing to do if it imported fine
    if not any(isinstance(f, _TorchvisionHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _HOOK)


def uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _TorchvisionHook)]


def offline_hub() -> None:
    """Default the HF hub to offline unless the user set it: pathor1 never needs the network for its demo."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    # bitsandbytes warns on every import on AVX512-BF16 CPUs that an optional 4-bit CPU kernel package is absent:
    # noise above a CLI's one-line error, and 4-bit runs need CUDA anyway (stages.preflight)
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


# A CLI whose training a signal stopped early, after every rank saved a checkpoint (stages/preemption.py): sysexits.h
# EX_TEMPFAIL, "run it again". Here because exit_process treats it as a clean end and recipes/launch.py reads it.
PREEMPTED_EXIT = 75


def exit_process(code: int | None) -> None:
    """End a CLI process (``if __name__ == "__main__"`` only, after every result is written and closed).

    At exit CPython runs full cyclic collections over every object still alive: with torch, torchvision,
    transformers and open_clip loaded that is ~1 M objects, measured at 1.2-1.4 s per process on the 2-core
    machine (``import open_clip_train.main`` then exit: 6.0 s; the same with ``gc.freeze()`` first: 4.8 s), spent
    finding garbage the OS reclaims anyway. ``gc.freeze()`` moves that heap where the collector does not look.
    atexit handlers (logging.shutdown, TensorBoard writers), stdout/stderr flushing and module teardown still
    run; only objects in reference cycles lose their finalizers, so nothing may still hold unwritten data --
    which is why this is called after ``main()`` returned, never from library code or tests.

    A rank in a process group ends it first (``release_process_group``): torch documents destroying the group as
    the shutdown every trainer process owes, and accelerate, TRL and open_clip_train leave it undone.
    """
    import gc

    # a preempted rank stopped in step with all others (they agreed on the step): the group ends cleanly too
    release_process_group(success=code in (0, None, PREEMPTED_EXIT))
    gc.freeze()
    sys.exit(code)


def release_process_group(success: bool, settle_s: float = 0.25) -> None:
    """Destroy this process's default process group (only on success: under NCCL a failed rank's peers may still
    sit in a collective, and destroying then can hang the job), then let gloo's workers finish before teardown.

    Why the pause: a gloo worker thread drops its last reference to a finished collective's work only after the
    caller's ``wait()`` returned, and that release takes the GIL (the work keeps Python thread-local state). If
    the interpreter is already finalizing, the thread is unwound from a noexcept destructor: ``terminate called
    without an active exception``, SIGABRT, and torchrun reports a finished job as failed. gdb showed exactly that
    stack (``ProcessGroupGloo::runLoop`` -> ``~AsyncWork`` -> ``take_gil`` -> ``pthread_exit``). Destroying the
    group joins its workers only when nothing else holds it; DDP's reducer does. Measured with 2-rank gloo DDP,
    backward then exit, destroy alone: 2 of 15 runs aborted (5 of 20 with both cores busy); destroy plus this
    pause: 0 of 30 (0 of 20 busy). Sleeping releases the GIL, which is all the workers wait for."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to find out
    if dist is None or not (dist.is_available() and dist.is_initialized()):
        return
    if success:
        dist.destroy_process_group()
    time.sleep(settle_s)


def version_in_range(package: str, supported: tuple[str, str], version: str | None = None) -> bool:
    """Whether ``package``'s installed (or given) release lies in ``supported`` = (lowest, highest), both
    inclusive, compared by major.minor: the range a patch of that library's internals was checked against."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as installed

    from packaging.version import Version

    try:
        release = Version(version or installed(package)).release[:2]
    except PackageNotFoundError:
        return False
    low, high = (Version(v).release[:2] for v in supported)
    return low <= release <= high


def require_version(package: str, supported: tuple[str, str], what: str) -> None:
    """Refuse to patch ``what`` (a library internal) outside the release range it was checked against."""
    if not version_in_range(package, supported):
        from importlib.metadata import version as installed

        raise RuntimeError(f"{what} patches {package} internals checked against {package} {supported[0]}-"
                           f"{supported[1]}, not {installed(package)}: re-check it against this release and "
                           f"widen the range, or install {package} within it")
