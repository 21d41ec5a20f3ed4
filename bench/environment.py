"""What a run records about where it ran: package versions, git commit, device, host."""
from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any, Dict

PACKAGES = ("irn-bench", "torch", "torchvision", "numpy", "scipy", "mlflow", "optuna", "pydantic", "pandas",
            "scikit-learn", "dask", "distributed")


def git_commit(start: Path | None = None) -> Dict[str, Any]:
    """HEAD commit and dirty flag of the checkout holding the code (or the cwd), 'unknown' outside git."""
    here = Path(start or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_info(device: str) -> Dict[str, Any]:
    import torch

    info: Dict[str, Any] = {"device": device, "cpu": cpu_name(), "torch_threads": torch.get_num_threads()}
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        info["gpu"] = torch.cuda.get_device_name(idx)
        info["cuda"] = torch.version.cuda
        info["tf32"] = {"cudnn": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32}
    return info


def environment(device: str) -> Dict[str, Any]:
    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = metadata.version(p)
        except metadata.PackageNotFoundError:
            versions[p] = None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "packages": versions,
        "git": git_commit(),
        **device_info(device),
    }


def resolve_device(device: str) -> str:
    """'auto' -> cuda if available else cpu; validates cuda:N."""
    import torch

    if device in ("auto", None, ""):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available on this machine")
        idx = torch.device(device).index
        if idx is not None and idx >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} GPU(s) visible")
        return device
    raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
