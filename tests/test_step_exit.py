"""A step's process exits without the interpreter's final collections walking every
object its libraries made (components/__init__.py): real subprocesses, as kfp.local
runs a step."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# An exit handler registered before cauce.components is imported runs after cauce's
# (exit handlers run last-registered first): it sees what the step's exit looks like.
STEP = textwrap.dedent(
    """
    import atexit, gc, sys

    def report():
        print("frozen", gc.get_freeze_count(), flush=True)
        sys.stdout.write("flushed after freeze\\n")

    atexit.register(report)
    import cauce.components  # what every step's component body imports first

    objects = [[i, {"k": i}] for i in range(50_000)]
    for pair in objects:
        pair.append(pair)  # reference cycles, as library objects make them
    open(sys.argv[1], "w").write("output written")  # a step's output, closed when freed
    {exit}
    """
)


def run_step(tmp_path, ending: str) -> subprocess.CompletedProcess:
    script = tmp_path / "step.py"
    script.write_text(STEP.replace("{exit}", ending))
    return subprocess.run([sys.executable, str(script), str(tmp_path / "out.txt")], capture_output=True, text=True, timeout=60)


def test_a_step_freezes_its_objects_at_exit_and_every_exit_handler_still_runs(tmp_path):
    done = run_step(tmp_path, "")
    assert done.returncode == 0, done.stderr
    frozen = int(done.stdout.split()[1])
    assert frozen > 50_000  # the step's objects, out of the final collections' reach
    assert "flushed after freeze" in done.stdout
    assert (tmp_path / "out.txt").read_text() == "output written"


def test_a_failing_step_still_exits_with_its_error(tmp_path):
    failed = run_step(tmp_path, "raise ValueError('column fare: expected a number')")
    assert failed.returncode == 1
    assert "ValueError: column fare: expected a number" in failed.stderr
    assert "frozen" in failed.stdout
    assert run_step(tmp_path, "sys.exit(3)").returncode == 3
