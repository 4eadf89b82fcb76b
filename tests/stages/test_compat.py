"""stages.compat: the CLI exit that skips the final heap scan."""
import subprocess
import sys


def test_exit_process_keeps_the_exit_code_atexit_handlers_and_buffered_output(tmp_path):
    out = tmp_path / "out.txt"
    code = ("import atexit, torch; from stages.compat import exit_process; "
            f"f = open({str(out)!r}, 'w'); f.write('buffered'); "
            "atexit.register(lambda: print('atexit ran', flush=True)); print('stdout kept'); exit_process(3)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 3
    assert done.stdout.splitlines() == ["stdout kept", "atexit ran"]
    assert out.read_text() == "buffered"  # a file object not in a cycle is still closed (flushed) at teardown
