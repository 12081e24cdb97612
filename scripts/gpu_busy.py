"""How busy the GPU was (NVML's utilisation sampled in a thread), and freeing its memory between runs."""

from __future__ import annotations

import ctypes
import gc
import threading
import time

import torch


class GpuBusy:
    """Samples NVML's GPU utilisation of device 0 (percent of its last sample period in which a kernel ran) in a
    thread; ``fraction(t0, t1)`` averages the samples taken between two ``time.perf_counter()`` instants. NVML is
    read through ctypes (libnvidia-ml ships with the driver), so no Python package is needed; None without it."""

    def __init__(self, *, period_s: float = 0.05):
        self.period_s = period_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = None
        self._nvml = self._handle = None
        try:
            self._nvml = ctypes.CDLL("libnvidia-ml.so.1")
            handle = ctypes.c_void_p()
            if self._nvml.nvmlInit_v2() == 0 and self._nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) == 0:
                self._handle = handle
        except OSError:
            self._nvml = None

    def __enter__(self) -> GpuBusy:
        if self._handle is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        class Utilization(ctypes.Structure):
            _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]

        util = Utilization()
        while not self._stop.wait(self.period_s):
            if self._nvml.nvmlDeviceGetUtilizationRates(self._handle, ctypes.byref(util)) == 0:
                self.samples.append((time.perf_counter(), util.gpu))

    def fraction(self, t0: float, t1: float) -> float | None:
        inside = [u for t, u in self.samples if t0 <= t <= t1]
        return sum(inside) / len(inside) / 100 if inside else None


def free_cuda_memory() -> None:
    """Drop unreferenced tensors and return cached blocks, so the next run starts with the GPU's memory free."""
    gc.collect()
    torch.cuda.empty_cache()
