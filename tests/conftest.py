"""Shared test set-up: the checkout first on the path, one thread per process, CUDA hidden and Triton's interpreter
unless ``-m gpu``, and the ``job`` marker.

``job`` marks the multi-rank / multi-process tests (forked ranks, torchrun, subprocesses): ``pytest -m "not job"``
runs the fast unit tests alone. It is applied here, by reading each test module: a test is a job test when it,
a fixture it uses or a helper either calls (transitively, within its module) starts ranks or processes
(``_STARTS_PROCESSES``); ``@pytest.mark.job`` marks one by hand. New test files need nothing.
"""

import ast
import atexit
import functools
import os
import re
import shutil
import sys
import tempfile

import pytest

# Tests import the project from the checkout (pip install -e . does the same).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("OMP_NUM_THREADS", "1")
# Jobs under test profile their cost models afresh and leave the user's cache alone (pp_runtime/model/cost_cache.py).
os.environ.setdefault("PP_RUNTIME_COST_CACHE", tempfile.mkdtemp(prefix="pp-runtime-test-cost-cache-"))
atexit.register(shutil.rmtree, os.environ["PP_RUNTIME_COST_CACHE"], ignore_errors=True)

from hypothesis import settings  # noqa: E402

# CI machines are small and shared: judge properties, never how fast one example ran.
settings.register_profile("pp_runtime", deadline=None)
settings.load_profile("pp_runtime")


def gpu_session(markexpr: str) -> bool:
    """Whether this pytest run asked for the GPU tests (``-m gpu``, or an expression selecting them)."""
    return "gpu" in markexpr and "not gpu" not in markexpr


_STARTS_PROCESSES = re.compile(r"\b(run_job_ranks|run_job_outcomes|run_ranks|run_ranks_outcomes|elastic_launch|"
                               r"subprocess\.\w+|torch\.distributed\.run|mp\.Process|multiprocessing)\b")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs CUDA; run with `python -m pytest -q -m gpu`, skipped otherwise")
    # The CPU suite stays on the CPU even on a GPU machine: with CUDA hidden before anything touches it, jobs
    # resolve device=auto to the CPU (float32, as the references), and forked ranks never inherit an initialised
    # CUDA context. Triton's interpreter (the triton backend on the CPU) must be chosen before triton's first
    # import, which comes later, when the test modules are collected.
    if not gpu_session(config.getoption("markexpr") or ""):
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
        os.environ.setdefault("TRITON_INTERPRET", "1")
    config.addinivalue_line("markers", "job: starts ranks or processes (multi-rank job tests); deselect with "
                                       "-m 'not job' for the unit tests alone")


@functools.cache
def _job_functions(path: str) -> frozenset[str]:
    """Names of the module's functions (tests, fixtures, helpers, methods) that start ranks or processes, directly
    or by calling another such function of the module."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    tree = ast.parse(source)
    calls: dict[str, set[str]] = {}
    direct: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            calls[node.name] = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
                n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}
            if _STARTS_PROCESSES.search(ast.get_source_segment(source, node) or ""):
                direct.add(node.name)
    jobs = set(direct)
    while True:
        more = {name for name, used in calls.items() if name not in jobs and used & jobs}
        if not more:
            return frozenset(jobs)
        jobs |= more


def pytest_collection_modifyitems(config, items):
    for item in items:
        path = getattr(item, "path", None)
        if path is None or path.suffix != ".py" or item.get_closest_marker("job"):
            continue
        jobs = _job_functions(str(path))
        if getattr(item, "originalname", item.name) in jobs or jobs.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.job)
