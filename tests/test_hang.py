"""A process that is alive but gets nothing back from its devices ends with every thread's stack and one line."""

import subprocess
import sys

from helpers import REPO

WATCHED = """
import threading, time
from resnet_jax import hang

def stuck_input():  # a thread that will never deliver: the main thread waits on it forever
  threading.Event().wait()

watch = hang.ProgressWatch(timeout={timeout}, workdir={workdir!r}, process_index=0)
watch.start()
watch.arm()
for _ in range(3):  # three results in time
  time.sleep({timeout} / 3)
  watch.progressed()
worker = threading.Thread(target=stuck_input, name="stuck-input")
worker.start()
worker.join()
"""


def test_no_progress_for_the_timeout_dumps_every_stack_and_stops_with_one_line(tmp_path):
  code = WATCHED.format(timeout=2.0, workdir=str(tmp_path))
  proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 4, proc.stderr[-3000:]
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  assert errors == [
      f"error: process 0 got no result from its devices for 2 s (a hang; every thread's stack is in "
      f"{tmp_path}/hang.process0.txt); stopping the job. Rerun the command to resume from the newest checkpoint; "
      "raise --config.hang_timeout_s if a step, an evaluation or a save can legitimately take that long"
  ], proc.stderr[-3000:]
  stacks = (tmp_path / "hang.process0.txt").read_text()
  assert "stuck_input" in stacks and "in join" in stacks  # the stuck thread and the main thread waiting on it
