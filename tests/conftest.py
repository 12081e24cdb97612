import os
import sys

# Tests import the project from the checkout (pip install -e . does the same).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_NUM_THREADS", "1")

from hypothesis import settings  # noqa: E402

# CI machines are small and shared: judge properties, never how fast one example ran.
settings.register_profile("pp_runtime", deadline=None)
settings.load_profile("pp_runtime")


def gpu_session(markexpr: str) -> bool:
    """Whether this pytest run asked for the GPU tests (``-m gpu``, or an expression selecting them)."""
    return "gpu" in markexpr and "not gpu" not in markexpr


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; run with `python -m pytest -q -m gpu`, skipped otherwise")
    # The CPU suite stays on the CPU even on a GPU machine: with CUDA hidden before anything touches it, jobs
    # resolve device=auto to the CPU (float32, as the references), and forked ranks never inherit an initialised
    # CUDA context. Triton's interpreter (the triton backend on the CPU) must be chosen before triton's first
    # import, which comes later, when the test modules are collected.
    if not gpu_session(config.getoption("markexpr") or ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("TRITON_INTERPRET", "1")
