import os
import sys

# Tests import the project from the checkout (pip install -e . does the same).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import settings  # noqa: E402

# CI machines are small and shared: judge properties, never how fast one example ran.
settings.register_profile("pp_runtime", deadline=None)
settings.load_profile("pp_runtime")

# Triton's interpreter (the triton attention backend on the CPU) must be chosen before triton is first imported.
import torch  # noqa: E402

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; skipped where no GPU exists")
