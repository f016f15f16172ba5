"""What every run measures beside accuracy: memory, FLOPs, and the environment it ran in."""

from __future__ import annotations

import functools
import os
import platform
import resource
import socket
import subprocess
import sys
import threading
from importlib import metadata
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory while the block runs, in MiB.

    CUDA: `torch.cuda.max_memory_allocated` (tensors only, as papers report). CPU: the peak
    resident memory of the process, sampled every few milliseconds (the kernel's own high-water
    mark covers the whole process lifetime, not one run among many).

    `growth_mib` is the peak less what was in use when the block began (CUDA: allocated tensors;
    CPU: resident memory): what training itself added. On the CPU the absolute peak is mostly
    Python and PyTorch (about 800 MiB), which hides the difference between methods.
    """

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device = device
        self.interval = interval
        self.peak_bytes = 0
        self.baseline_bytes: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None:
                self.peak_bytes = max(self.peak_bytes, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline_bytes = torch.cuda.memory_allocated(self.device)
        elif (rss := _rss_bytes()) is not None:
            self.baseline_bytes = rss
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _rss_bytes() or 0)
        else:  # no /proc (macOS): the process high-water mark, in bytes there
            self.peak_bytes = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    @property
    def mib(self) -> float:
        return self.peak_bytes / 2**20

    @property
    def growth_mib(self) -> float | None:
        if self.baseline_bytes is None:
            return None
        return max(0, self.peak_bytes - self.baseline_bytes) / 2**20


def forward_gflops(model: torch.nn.Module, image_size: int, device: torch.device) -> float:
    """Forward FLOPs for one image, counted by torch's FlopCounterMode (a multiply-add is 2)."""
    was_training = model.training
    model.eval()
    x = torch.zeros(1, 3, image_size, image_size, device=device)
    counter = FlopCounterMode(display=False)
    # Not under no_grad: the counter's module tracker hooks every input that requires grad and
    # fails on views of trainable parameters (e.g. prompts) made with grad disabled.
    with counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 1e9


@functools.lru_cache(maxsize=1)
def git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict:
    env = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": {d: _version(d) for d in ("peftbench", "torch", "torchvision", "timm", "numpy")},
        "git_commit": git_commit(),
        "device": str(device),
        "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                        else platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "slurm": {k: os.environ[k] for k in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID",
                                              "SLURM_ARRAY_TASK_ID", "SLURM_JOB_PARTITION")
                  if k in os.environ},
    }
    return env


def cpu_contention(threads: int) -> str | None:
    """Why timings on this machine will be slow and not comparable, or None.

    Each bench process uses as many torch threads as it has cores; with other work on those cores
    (another bench run, a build) the threads fight for them and a run can take 20-40 times as
    long. The 1-minute load average counts the work already there (this process, idle until it
    trains, adds a few tenths: the slack below); with this run's threads on top, more runnable
    threads than cores is oversubscription.
    """
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if load + threads <= cores + 0.75:
        return None
    return (f"this machine is busy: load {load:.1f} on {cores} cores before this run's {threads} torch "
            f"threads, so training will be slow and its times not comparable; let the other work finish, "
            f"or give each concurrent bench process --threads {max(1, cores // 2)}")
