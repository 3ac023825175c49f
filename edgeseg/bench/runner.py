"""Run one measurement in its own process, so that its peak memory is its own.

`run_job(job, workdir)` writes the job as JSON, starts ``python -m edgeseg.bench.worker JOB`` and
reads the result the worker writes. Host peak RSS is measured inside the worker (VmHWM, not
inherited across exec). GPU memory is sampled from here while the worker runs (`nvidia-smi`, every
0.1 s): the device memory in use above what it was just before the worker started, which counts
every backend alike (PyTorch's allocator, ONNX Runtime, TensorRT) and includes the CUDA context.
A worker that dies (killed for memory, a crash in a native library) or overruns `timeout` becomes
an error row with the end of its stderr; it never stops the other measurements.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from edgeseg.runtime.atomic import refuse_link, unlink_own, write_small_text


class GpuMemorySampler:
    """Peak device memory in use (GiB, all GPUs summed) above the level at start, polled with nvidia-smi.

    `available` is False (and `peak_gib` None) where nvidia-smi is missing or lists no GPU.
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.exe = shutil.which("nvidia-smi")
        self.base: float | None = None
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def used_gib(self) -> float | None:
        if self.exe is None:
            return None
        try:
            proc = subprocess.run([self.exe, "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                  capture_output=True, text=True, timeout=10)
            values = [float(v) for v in proc.stdout.split() if v.replace(".", "", 1).isdigit()]
        except (OSError, subprocess.TimeoutExpired, ValueError):
            return None
        return sum(values) / 1024 if proc.returncode == 0 and values else None

    @property
    def available(self) -> bool:
        return self.base is not None

    def __enter__(self) -> "GpuMemorySampler":
        self.base = self.used_gib()
        if self.base is None:
            return self
        self.peak = self.base

        def watch() -> None:
            while not self._stop.wait(self.interval):
                used = self.used_gib()
                if used is not None:
                    self.peak = max(self.peak or 0.0, used)

        self._thread = threading.Thread(target=watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def peak_gib(self) -> float | None:
        if self.base is None or self.peak is None:
            return None
        return round(max(0.0, self.peak - self.base), 3)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return "\n".join(text[-lines:])


def run_job(job: dict, workdir: Path, name: str, *, gpu: bool = False, timeout: float | None = None) -> dict:
    """Run `job` in a fresh worker process; its result dict, with `peak_gpu_gib` added when `gpu`.

    Always returns a dict with "status": "ok", "skipped" (the backend refused to start here, with the
    reason) or "error" (with the reason: the worker's own message, or how the process ended).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    job = dict(job, result=str(workdir / f"{name}.result.json"))
    job_path = workdir / f"{name}.job.json"
    write_small_text(job_path, json.dumps(job, indent=2))  # never through a link in the work folder
    result_path = Path(job["result"])
    unlink_own(result_path)
    out_path, err_path = workdir / f"{name}.stdout.txt", workdir / f"{name}.stderr.txt"
    for p in (out_path, err_path):
        refuse_link(p)
    cmd = [sys.executable, "-m", "edgeseg.bench.worker", str(job_path)]
    t0 = time.perf_counter()
    sampler = GpuMemorySampler() if gpu else None
    with open(out_path, "w") as out, open(err_path, "w") as err:
        if sampler is not None:
            sampler.__enter__()
        try:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err)
            try:
                rc = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                rc = None
            except BaseException:  # Ctrl-C or a kill of this process: never leave a worker running on its own
                proc.kill()
                proc.wait()
                raise
        finally:
            if sampler is not None:
                sampler.__exit__(None, None, None)
    wall = round(time.perf_counter() - t0, 3)
    if result_path.exists():
        result = json.loads(result_path.read_text())
    elif rc is None:
        result = {"status": "error", "reason": f"timed out after {timeout} s (--timeout)"}
    else:
        how = f"was killed by signal {-rc}" + (" (SIGKILL: out of memory?)" if rc == -9 else "") if rc < 0 \
            else f"exited with code {rc}"
        tail = _tail(err_path)
        result = {"status": "error", "reason": f"the worker {how}" + (f": {tail.splitlines()[-1]}" if tail else ""),
                  "stderr_tail": tail}
    result["worker_wall_s"] = wall
    if sampler is not None:
        result["peak_gpu_gib"] = sampler.peak_gib
        if not sampler.available:
            result.setdefault("notes", []).append("peak GPU memory not measured: nvidia-smi is missing or lists no GPU")
    return result
