"""GPU thermal and load readings through NVML (the optional `nvidia-ml-py` package, module `pynvml`).

Where NVML is missing (no package, no driver, no GPU) `read_gpu_load` returns a reading with
available=False and the reason; the control layer then treats the load as unknown and defers nothing.
"""

from __future__ import annotations

import dataclasses
import importlib

__all__ = ["LoadReading", "read_gpu_load"]


@dataclasses.dataclass(frozen=True)
class LoadReading:
    """Per-GPU temperature (C) and utilization (%) as tuples over devices; `reason` says why none when
    available is False."""

    available: bool
    reason: str
    temperature_c: tuple[float, ...] = ()
    utilization_pct: tuple[float, ...] = ()

    def metrics(self) -> dict[str, float]:
        """Scalars for the monitor: hottest GPU and busiest GPU (absent when NVML is unavailable)."""
        if not self.available or not self.temperature_c:
            return {}
        return {"gpu_temp_c": max(self.temperature_c), "gpu_util_pct": max(self.utilization_pct)}


def read_gpu_load(module: str = "pynvml") -> LoadReading:
    """Read temperature and utilization of every NVIDIA GPU through NVML; never raises."""
    try:
        nvml = importlib.import_module(module)
    except ImportError:
        return LoadReading(False, "pynvml not installed (pip install nvidia-ml-py): load awareness off")
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound, _DriverNotLoaded, ...
        return LoadReading(False, f"NVML unavailable ({type(exc).__name__}: {exc}): load awareness off")
    try:
        temps, utils = [], []
        for i in range(nvml.nvmlDeviceGetCount()):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            temps.append(float(nvml.nvmlDeviceGetTemperature(h, nvml.NVML_TEMPERATURE_GPU)))
            utils.append(float(nvml.nvmlDeviceGetUtilizationRates(h).gpu))
        if not temps:
            return LoadReading(False, "NVML reports no GPU: load awareness off")
        return LoadReading(True, "nvml", tuple(temps), tuple(utils))
    except Exception as exc:
        return LoadReading(False, f"NVML query failed ({type(exc).__name__}: {exc}): load awareness off")
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
