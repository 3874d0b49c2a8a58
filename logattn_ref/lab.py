"""Open the course in JupyterLab: ``make lab`` runs ``python -m logattn_ref.lab``.

What it takes care of, so that one command works on a laptop, a lab machine, a container and a cloud VM:

- JupyterLab's root is the clone itself, so ``notebooks/``, ``exercises/`` and ``solutions/`` are all in its file
  browser and the lessons' links (``../exercises/NN_….ipynb``) resolve; lesson 0 opens first.
- As root (the default user of most containers and cloud notebooks) Jupyter refuses to start without
  ``--allow-root``; it is passed only when the user *is* root.
- On a machine with no display (SSH, a container) no browser is launched, and that is not an error: the URL to
  open, with its token, is printed in a box before Jupyter's own log. Over SSH, forward the port first
  (``ssh -L 8888:localhost:8888 …``).

Extra arguments go to ``jupyter lab`` unchanged (``python -m logattn_ref.lab --port 9000``).
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from .notebooks import repo_root

FIRST_LESSON = "notebooks/00_start_here.ipynb"


def is_root_user() -> bool:
    """True for uid 0 (where Jupyter needs ``--allow-root``); False where there are no uids (Windows)."""
    return hasattr(os, "geteuid") and os.geteuid() == 0


def is_headless(env: Optional[Mapping[str, str]] = None, platform: str = sys.platform) -> bool:
    """True on Linux/BSD with no X11 or Wayland display: a browser cannot be opened from here."""
    env = os.environ if env is None else env
    if platform.startswith(("darwin", "win")):
        return False
    return not (env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def free_port(preferred: int = 8888) -> int:
    """``preferred`` if nothing listens there, else a free port chosen by the OS."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise OSError("no free TCP port on 127.0.0.1")


def _option_given(extra: Sequence[str], name: str) -> bool:
    return any(a == f"--{name}" or a.startswith(f"--{name}=") or a.endswith(f".{name}") or f".{name}=" in a
               for a in extra)


def _port_given(extra: Sequence[str]) -> Optional[int]:
    """The port of ``--port=N`` or ``--port N`` among the extra arguments, if any."""
    for i, arg in enumerate(extra):
        if arg.startswith("--port="):
            return int(arg.split("=", 1)[1])
        if arg == "--port" and i + 1 < len(extra):
            return int(extra[i + 1])
    return None


def lab_command(root: Path, *, port: int, token: str, as_root: bool, headless: bool,
                extra: Sequence[str] = ()) -> List[str]:
    """The ``jupyter lab`` command line (a list for ``subprocess``), from the facts about this machine."""
    cmd = [sys.executable, "-m", "jupyterlab", f"--ServerApp.root_dir={root}",
           f"--IdentityProvider.token={token}", str(root / FIRST_LESSON)]
    if not _option_given(extra, "port"):
        cmd.append(f"--port={port}")
    if as_root and not _option_given(extra, "allow-root"):
        cmd.append("--allow-root")
    if headless and not _option_given(extra, "no-browser"):
        cmd.append("--no-browser")
    return cmd + list(extra)


def banner(port: int, token: str, headless: bool) -> str:
    url = f"http://localhost:{port}/lab/tree/{FIRST_LESSON}?token={token}"
    how = ("No display here, so no browser is opened: open this URL in a browser on this machine, or forward "
           f"the port first over SSH (ssh -L {port}:localhost:{port} USER@HOST)." if headless else
           "A browser should open by itself; if it does not, open this URL.")
    lines = ["The course in JupyterLab:", f"  {url}", how, "Stop the server with Ctrl-C (twice)."]
    width = max(map(len, lines))
    return "\n".join(["+" + "-" * (width + 2) + "+"] + [f"| {line:<{width}} |" for line in lines]
                     + ["+" + "-" * (width + 2) + "+"])


def main(argv: Optional[Sequence[str]] = None) -> int:
    extra = list(sys.argv[1:] if argv is None else argv)
    root = repo_root()
    if not (root / FIRST_LESSON).is_file():
        print(f"error: {root / FIRST_LESSON} not found: run this from a clone of the course (the lessons are not "
              "part of a pip install)", file=sys.stderr)
        return 2
    port = _port_given(extra) or free_port()
    token = os.environ.get("LOGATTN_LAB_TOKEN") or secrets.token_hex(24)
    headless = is_headless()
    print(banner(port, token, headless), flush=True)
    cmd = lab_command(root, port=port, token=token, as_root=is_root_user(), headless=headless, extra=extra)
    try:
        return subprocess.call(cmd, cwd=root)
    except KeyboardInterrupt:  # Jupyter handles Ctrl-C itself; do not add a Python traceback to its output
        return 0


if __name__ == "__main__":
    sys.exit(main())
