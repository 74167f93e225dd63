"""The event-store benchmark's own environment, ``bench/.venv``: the project
(``pip install -e .[postgres,redis]``) and ``bench/requirements.txt``, where the
competitor (``eventsourcing``) is installed and nowhere else. Made without
the system's site-packages, and updated when either file (or :data:`EXTRAS`) changes.
The ``nats`` extra brings nats-py, the peer of the unit-of-work benchmark's log line."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "bench" / ".venv"
REQUIREMENTS = REPO / "bench" / "requirements.txt"
#: The project's extras installed there (the servers the benchmarks talk to).
EXTRAS = "postgres,redis,nats"


def venv_python() -> Path:
    return VENV / "bin" / "python"


def _install_fingerprint() -> str:
    digest = hashlib.sha256(EXTRAS.encode())
    for path in (REPO / "pyproject.toml", REQUIREMENTS):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def ensure_venv(log: Any = print) -> Path:
    """``bench/.venv`` with the project (``-e .[EXTRAS]``) and
    ``bench/requirements.txt``; created or updated when either file changed.
    It never sees the system's or the dev venv's packages."""
    python = venv_python()
    stamp = VENV / ".installed-stamp"
    fingerprint = _install_fingerprint()
    if python.exists() and stamp.exists() and stamp.read_text() == fingerprint:
        return python
    if not python.exists():
        log(f"creating {VENV.relative_to(REPO)} (the competitors live only there)")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    log(f"installing the project and {REQUIREMENTS.relative_to(REPO)} into it")
    subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-e",
            f"{REPO}[{EXTRAS}]",
            "-r",
            str(REQUIREMENTS),
        ],
        check=True,
    )
    stamp.write_text(fingerprint)
    return python


__all__ = ["EXTRAS", "REQUIREMENTS", "VENV", "ensure_venv", "venv_python"]
