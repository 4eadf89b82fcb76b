"""stages.compat: the CLI exit that skips the final heap scan."""
import subprocess
import sys

from tests.reliability.children import child_env


def test_exit_process_keeps_the_exit_code_atexit_handlers_and_buffered_output(tmp_path):
    out = tmp_path / "out.txt"
    code = ("import atexit, torch; from stages.compat import exit_process; "
            f"f = open({str(out)!r}, 'w'); f.write('buffered'); "
            "atexit.register(lambda: print('atexit ran', flush=True)); print('stdout kept'); exit_process(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 3
    assert done.stdout.splitlines() == ["stdout kept", "atexit ran"]
    assert out.read_text() == "buffered"  # a file object not in a cycle is still closed (flushed) at teardown


def run_two_gloo_ranks(tmp_path, code: int) -> subprocess.CompletedProcess:
    script = tmp_path / "ranks.py"
    script.write_text(
        "import atexit, torch, torch.distributed as dist\n"
        "from stages.compat import exit_process\n"
        "dist.init_process_group('gloo')\n"
        "model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(64, 64))\n"
        "for _ in range(3):\n"
        "    model(torch.randn(4, 64)).sum().backward()\n"
        "atexit.register(lambda: print(f'initialized at exit: {dist.is_initialized()}', flush=True))\n"
        f"exit_process({code})\n")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    return subprocess.run(argv, capture_output=True, text=True, env=child_env(), timeout=120)


def test_a_successful_rank_destroys_its_process_group_before_exit(tmp_path):
    # A DDP backward right before exit: without release_process_group ~1 in 4 such jobs aborted at interpreter
    # teardown (a gloo worker took the GIL while the interpreter was finalizing).
    for _ in range(3):
        done = run_two_gloo_ranks(tmp_path, 0)
        assert done.returncode == 0, done.stderr[-3000:]
        assert done.stdout.count("initialized at exit: False") == 2


def test_a_failed_rank_leaves_its_process_group_alone(tmp_path):
    done = run_two_gloo_ranks(tmp_path, 3)
    assert done.returncode != 0
    assert done.stdout.count("initialized at exit: True") == 2
