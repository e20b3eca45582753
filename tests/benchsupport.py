"""Running a benchmark's quick mode from the tests (``python -m MODULE --quick --json``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_quick(module: str, path: Path) -> tuple[str, Any]:
    """``python -m MODULE --quick --json PATH``: its table and its figures."""
    result = subprocess.run(
        [sys.executable, "-m", module, "--quick", "--json", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout, json.loads(path.read_text())
