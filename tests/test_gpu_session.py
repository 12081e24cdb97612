"""scripts/gpu_session.sh without a GPU: it refuses at once, naming why, instead of running parts that fail."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="checks the refusal on a machine without a GPU")
def test_refuses_at_once_without_a_gpu(tmp_path):
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), "30", "tests"], cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path)}, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2
    assert "no NVIDIA GPU" in proc.stderr
    assert not any(tmp_path.iterdir())  # no part ran, nothing written
