"""The package's examples run as a user runs them, against the session's daemon."""
import os
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "examples")


def run_example(name, socket_path, *args):
    env = dict(os.environ, TETHER_SOCKET=socket_path)
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], env=env, capture_output=True, text=True,
                          timeout=120)


def test_saxpy_example_matches_numpy(socket_path):
    run = run_example("saxpy.py", socket_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "matches numpy" in run.stdout


def test_fork_exit_example_tears_a_down_while_b_holds_the_fd(socket_path):
    run = run_example("fork_exit.py", socket_path)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "B alive: True" in run.stdout
    assert "reason ownerExit" in run.stdout or "reason bpf-" in run.stdout  # BPF notices earlier where loaded
    assert "1 device thread(s) killed, 1 region(s) freed, 67108864 bytes" in run.stdout
