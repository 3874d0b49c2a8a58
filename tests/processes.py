"""Stopping a server a test started in its own session (start_new_session=True): SIGTERM to its whole process
group so that it can shut its kernels down, SIGKILL after 20 s."""

import os
import signal
import subprocess


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
