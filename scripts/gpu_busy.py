"""How busy the GPU was (NVML's utilisation sampled in a thread), and freeing its memory between runs."""

from __future__ import annotations

import ctypes
import gc
import os
import threading
import time

import torch


def nvml_key(index: int, *, pci: tuple[int, int, int] | None, visible: str | None) -> tuple[str, str | int]:
    """How NVML names CUDA device ``index`` of this process: ``("pci", "0000:17:00.0")`` from its PCI address
    (domain, bus, device) when torch reports one; else through ``CUDA_VISIBLE_DEVICES`` (``visible``): an index
    there is NVML's index, a ``GPU-...`` entry a UUID; else ``("index", index)``. NVML counts every GPU of the
    machine in PCI order, while CUDA counts only the visible ones, by default fastest first: so CUDA's device k is
    NVML's device k only on a machine with no CUDA_VISIBLE_DEVICES and identical GPUs."""
    if pci is not None:
        domain, bus, device = pci
        return "pci", f"{domain:04x}:{bus:02x}:{device:02x}.0"
    entries = [e.strip() for e in visible.split(",")] if visible else []
    if index < len(entries):
        entry = entries[index]
        if entry.isdigit():
            return "index", int(entry)
        if entry.startswith("GPU-"):
            return "uuid", entry
    return "index", index


def _pci_of(index: int) -> tuple[int, int, int] | None:
    props = torch.cuda.get_device_properties(index)
    try:
        return props.pci_domain_id, props.pci_bus_id, props.pci_device_id
    except AttributeError:  # older torch
        return None


class GpuBusy:
    """Samples NVML's GPU utilisation of one CUDA device (percent of its last sample period in which a kernel ran)
    in a thread; ``fraction(t0, t1)`` averages the samples taken between two ``time.perf_counter()`` instants.
    ``device``: the CUDA device to watch (default: the current one), found in NVML by its PCI address
    (``nvml_key``). NVML is read through ctypes (libnvidia-ml ships with the driver), so no Python package is
    needed; None without it."""

    def __init__(self, device: torch.device | int | None = None, *, period_s: float = 0.05):
        self.period_s = period_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = None
        self._nvml = self._handle = None
        try:
            self._nvml = ctypes.CDLL("libnvidia-ml.so.1")
        except OSError:
            self._nvml = None
            return
        if self._nvml.nvmlInit_v2() != 0 or not torch.cuda.is_available():
            return
        if isinstance(device, int):
            index = device
        else:
            index = device.index if device is not None and device.index is not None else torch.cuda.current_device()
        kind, key = nvml_key(index, pci=_pci_of(index), visible=os.environ.get("CUDA_VISIBLE_DEVICES"))
        handle = ctypes.c_void_p()
        if kind == "pci":
            found = self._nvml.nvmlDeviceGetHandleByPciBusId_v2(key.encode(), ctypes.byref(handle))
        elif kind == "uuid":
            found = self._nvml.nvmlDeviceGetHandleByUUID(key.encode(), ctypes.byref(handle))
        else:
            found = self._nvml.nvmlDeviceGetHandleByIndex_v2(key, ctypes.byref(handle))
        if found == 0:
            self._handle = handle

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
