"""Whether the installed GPU libraries pair up: ONNX Runtime GPU, TensorRT, CUDA (torch, cuda-python), driver.

A backend whose libraries do not match fails only when a session starts, with a loader error that
names a missing `.so`. This module names the pair instead: which library, which version, and what to
install. Facts come from installed distributions' metadata (importlib.metadata, nothing imported), the
NEEDED entries of ONNX Runtime's provider libraries (read from the ELF file, never loaded) and the
driver version in /proc/driver/nvidia/version. The diagnosis (`diagnose`) is a pure function of them.

ORT_GPU_BUILDS was measured on PyPI's onnxruntime-gpu wheels (Linux x86_64, CPython 3.11): the NEEDED
entries of `libonnxruntime_providers_cuda.so` and `libonnxruntime_providers_tensorrt.so` of every
release from 1.18.1 to 1.31.1 (docs/gpu-install.md). Every one links TensorRT 10 (`libnvinfer.so.10`).
"""

from __future__ import annotations

import re
import struct
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

# (first, last) release, CUDA major, cuDNN major, TensorRT major the TensorRT EP links
ORT_GPU_BUILDS = (
    ((1, 18), (1, 18), 11, 8, 10),
    ((1, 19), (1, 26), 12, 9, 10),
    ((1, 27), (1, 31), 13, 9, 10),
)
# The oldest Linux driver of each CUDA major (CUDA's minor version compatibility): NVIDIA's release notes.
MIN_DRIVER = {11: (450, 80, 2), 12: (525, 60, 13), 13: (580, 65, 6)}
# TensorRT 10 the CUDA 12 / CUDA 13 ONNX Runtime builds were made with (ORT's TensorRT EP docs and build pipeline).
TRT_FOR_ORT = {12: "10.9", 13: "10.13.3.9"}
ORT_GPU_EXTRA = {12: "edgeseg[gpu-cu12]", 13: "edgeseg[gpu]"}
CUDA_PYTHON = {12: "cuda-python>=12.6,<13", 13: "cuda-python>=13,<14"}
DRIVER_FILE = Path("/proc/driver/nvidia/version")
# How to get ONNX Runtime's GPU providers: [gpu] instead of [cpu], whose CPU onnxruntime shares their module.
ORT_GPU_HINT = ("pip install 'edgeseg[gpu]' ('edgeseg[gpu-cu12]' for drivers older than r580) on a machine with an "
                "NVIDIA GPU, without [cpu]; if the CPU onnxruntime is installed already, replace it (`edgeseg info` "
                "prints the command; docs/gpu-install.md)")
TRT_DIST = re.compile(r"^tensorrt[-_]cu(\d+)(?:[-_](libs|bindings))?$")


@dataclass(frozen=True)
class Finding:
    library: str  # the distribution to change
    version: str
    problem: str
    fix: str
    affects: tuple[str, ...]  # backend names of runtime.availability
    severity: str  # "error": the backend would fail at first use; "warning": it may run, but not as paired

    def to_dict(self) -> dict:
        return {**asdict(self), "affects": list(self.affects)}


@dataclass(frozen=True)
class GpuFacts:
    onnxruntime: str | None = None  # the CPU wheel
    onnxruntime_gpu: str | None = None
    ort_cuda: int | None = None  # CUDA major the GPU wheel links
    ort_tensorrt: int | None = None  # TensorRT major its TensorRT execution provider links
    ort_source: str = "none"  # "linked" (read from its libraries), "table" (ORT_GPU_BUILDS), "unknown", "none"
    tensorrt: str | None = None
    tensorrt_dists: dict[str, str] = field(default_factory=dict)  # every TensorRT distribution installed
    tensorrt_cuda: tuple[int, ...] = ()  # CUDA majors of those wheels (more than one: a conflict)
    cuda_python: str | None = None
    torch: str | None = None
    torch_cuda: int | None = None  # None: no torch, a CPU build, or not known
    driver: str | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "tensorrt_cuda": list(self.tensorrt_cuda)}


# --- facts ------------------------------------------------------------------------------------------
def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _requires(name: str) -> list[str]:
    try:
        return list(metadata.requires(name) or [])
    except metadata.PackageNotFoundError:
        return []


def _major(version: str | None) -> int | None:
    m = re.match(r"(\d+)", version or "")
    return int(m.group(1)) if m else None


def _release(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version.split("+")[0])[:3])


def needed_libraries(path: str | Path) -> list[str] | None:
    """DT_NEEDED entries of an ELF64 little-endian library, read from its section headers (never loaded)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
                return None
            shoff, = struct.unpack_from("<Q", head, 0x28)
            shentsize, shnum = struct.unpack_from("<HH", head, 0x3A)
            f.seek(shoff)
            table = f.read(shentsize * shnum)
            sections = [struct.unpack_from("<IIQQQQIIQQ", table, i * shentsize) for i in range(shnum)]
            for _, sh_type, _, _, offset, size, link, *_ in sections:
                if sh_type != 6:  # SHT_DYNAMIC
                    continue
                f.seek(offset)
                dynamic = f.read(size)
                str_offset, str_size = sections[link][4], sections[link][5]
                f.seek(str_offset)
                strings = f.read(str_size)
                out = []
                for i in range(0, len(dynamic) - 15, 16):
                    tag, value = struct.unpack_from("<qQ", dynamic, i)
                    if tag == 0:
                        break
                    if tag == 1:  # DT_NEEDED
                        out.append(strings[value:strings.index(b"\0", value)].decode())
                return out
    except (OSError, struct.error, IndexError, ValueError):
        return None
    return []


def _soname_major(needed: list[str], stem: str) -> int | None:
    for name in needed:
        m = re.fullmatch(rf"{re.escape(stem)}\.so\.(\d+)(?:\.\d+)*", name)
        if m:
            return int(m.group(1))
    return None


def _ort_linked() -> tuple[int | None, int | None]:
    """CUDA and TensorRT majors read from the installed onnxruntime-gpu's provider libraries."""
    try:
        dist = metadata.distribution("onnxruntime-gpu")
        files = {str(p).rsplit("/", 1)[-1]: p for p in (dist.files or [])}
    except metadata.PackageNotFoundError:
        return None, None
    cuda = trt = None
    for lib in ("libonnxruntime_providers_tensorrt.so", "libonnxruntime_providers_cuda.so"):
        if lib in files:
            needed = needed_libraries(dist.locate_file(files[lib])) or []
            cuda = cuda or _soname_major(needed, "libcudart")
            if lib.endswith("tensorrt.so"):
                trt = _soname_major(needed, "libnvinfer")
    return cuda, trt


def ort_build(version: str) -> tuple[int, int] | None:
    """(CUDA major, TensorRT major) of a PyPI onnxruntime-gpu release, from ORT_GPU_BUILDS."""
    release = _release(version)[:2]
    for first, last, cuda, _, trt in ORT_GPU_BUILDS:
        if first <= release <= last:
            return cuda, trt
    return None


def _torch_cuda(version: str | None) -> int | None:
    if not version:
        return None
    local = version.partition("+")[2]
    if local.startswith("cu") and local[2:].isdigit():
        return int(local[2:-1])  # cu130 -> 13, cu128 -> 12
    if local:
        return None  # +cpu, +rocm...
    for req in _requires("torch"):  # PyPI's default Linux build names its CUDA runtime wheel
        m = re.match(r"nvidia-cuda-runtime(?:-cu(\d+))?\s*(?:[=~<>!]=?\s*(\d+))?", req.replace("_", "-"))
        if m:
            return int(m.group(1) or m.group(2)) if (m.group(1) or m.group(2)) else None
    return None


def driver_version(path: Path | None = None) -> str | None:
    """The NVIDIA kernel driver's version, e.g. "580.65.06", from /proc (None when there is no driver)."""
    try:
        text = (path or DRIVER_FILE).read_text(errors="replace")
    except OSError:
        return None
    m = re.search(r"Kernel Module.*?\s(\d+\.\d+(?:\.\d+)?)\s", text)  # "... Module for x86_64  580.65.06  ..."
    return m.group(1) if m else None


def gather_facts() -> GpuFacts:
    ort_gpu = _version("onnxruntime-gpu")
    ort_cuda = ort_trt = None
    source = "none"
    if ort_gpu:
        ort_cuda, ort_trt = _ort_linked()
        source = "linked" if ort_cuda or ort_trt else "unknown"
        known = ort_build(ort_gpu)
        if known and source == "unknown":
            (ort_cuda, ort_trt), source = known, "table"
    trt_dists = {n: v for n in ("tensorrt", *(f"tensorrt-cu{c}{s}" for c in (12, 13) for s in ("", "-libs", "-bindings")))
                 if (v := _version(n))}
    cudas = {int(m.group(1)) for n in trt_dists if (m := TRT_DIST.match(n))}
    for req in _requires("tensorrt") if "tensorrt" in trt_dists else []:  # the meta package names its CUDA wheel
        if m := re.match(r"tensorrt[-_]cu(\d+)", req):
            cudas.add(int(m.group(1)))
    trt_version = next((trt_dists[n] for n in sorted(trt_dists, key=lambda n: ("bindings" not in n, n))), None)
    torch = _version("torch")
    return GpuFacts(
        onnxruntime=_version("onnxruntime"), onnxruntime_gpu=ort_gpu, ort_cuda=ort_cuda, ort_tensorrt=ort_trt,
        ort_source=source, tensorrt=trt_version, tensorrt_dists=trt_dists, tensorrt_cuda=tuple(sorted(cudas)),
        cuda_python=_version("cuda-python") or _version("cuda-bindings"), torch=torch, torch_cuda=_torch_cuda(torch),
        driver=driver_version(),
    )


# --- diagnosis: pure ---------------------------------------------------------------------------------
def _trt_spec(cuda: int, trt_major: int) -> str:
    floor = TRT_FOR_ORT.get(cuda, f"{trt_major}")
    return f"tensorrt-cu{cuda}>={floor},<{trt_major + 1}"


def _uninstall(names) -> str:
    return "pip uninstall -y " + " ".join(sorted(names))


def diagnose(f: GpuFacts) -> list[Finding]:
    """Every mismatched pair among the installed GPU libraries, each with the library, version and fix."""
    out: list[Finding] = []
    trt_cuda = f.tensorrt_cuda[0] if len(f.tensorrt_cuda) == 1 else None
    if f.onnxruntime and f.onnxruntime_gpu:
        out.append(Finding(
            "onnxruntime", f.onnxruntime,
            f"onnxruntime {f.onnxruntime} and onnxruntime-gpu {f.onnxruntime_gpu} are both installed: they share the "
            "`onnxruntime` module, so whichever was installed last decides whether the GPU providers exist",
            f"{_uninstall(['onnxruntime', 'onnxruntime-gpu'])} && pip install 'onnxruntime-gpu[cuda,cudnn]=={f.onnxruntime_gpu}'",
            ("ort-cuda", "ort-tensorrt"), "warning"))
    if len(f.tensorrt_cuda) > 1:
        out.append(Finding(
            "tensorrt", ", ".join(f"{n} {v}" for n, v in sorted(f.tensorrt_dists.items())),
            f"TensorRT wheels for CUDA {' and '.join(map(str, f.tensorrt_cuda))} are both installed: they share the "
            "`tensorrt` module and its libraries",
            f"{_uninstall(f.tensorrt_dists)} && pip install '{_trt_spec(f.ort_cuda or 13, f.ort_tensorrt or 10)}'",
            ("tensorrt", "ort-tensorrt"), "error"))
    if f.onnxruntime_gpu and f.ort_tensorrt and f.tensorrt and _major(f.tensorrt) != f.ort_tensorrt:
        cuda = f.ort_cuda or 13
        out.append(Finding(
            "tensorrt", f.tensorrt,
            f"onnxruntime-gpu {f.onnxruntime_gpu} loads TensorRT {f.ort_tensorrt} (libnvinfer.so.{f.ort_tensorrt}) but "
            f"TensorRT {f.tensorrt} is installed: its TensorRT execution provider cannot start (the native `tensorrt` "
            f"backend runs on TensorRT {f.ort_tensorrt} too)",
            f"{_uninstall(f.tensorrt_dists)} && pip install '{_trt_spec(cuda, f.ort_tensorrt)}'",
            ("ort-tensorrt",), "error"))
    elif f.onnxruntime_gpu and f.ort_cuda and trt_cuda and trt_cuda != f.ort_cuda:
        out.append(Finding(
            "tensorrt", f.tensorrt or "?",
            f"TensorRT {f.tensorrt} is the CUDA {trt_cuda} wheel but onnxruntime-gpu {f.onnxruntime_gpu} is built for "
            f"CUDA {f.ort_cuda}: its TensorRT execution provider would load two CUDA runtimes",
            f"{_uninstall(f.tensorrt_dists)} && pip install '{_trt_spec(f.ort_cuda, f.ort_tensorrt or 10)}'",
            ("ort-tensorrt",), "warning"))
    if f.onnxruntime_gpu and f.ort_cuda and f.torch_cuda and f.torch_cuda != f.ort_cuda:
        other = ORT_GPU_EXTRA.get(f.torch_cuda)
        alt = f" or pip install '{other}' (onnxruntime-gpu for CUDA {f.torch_cuda})" if other else ""
        out.append(Finding(
            "torch", f.torch or "?",
            f"torch {f.torch} is built for CUDA {f.torch_cuda} and onnxruntime-gpu {f.onnxruntime_gpu} for CUDA "
            f"{f.ort_cuda}: one process then loads two CUDA runtimes and two cuDNN builds",
            f"install torch's CUDA {f.ort_cuda} build (pytorch.org){alt}",
            ("torch-cuda", "ort-cuda", "ort-tensorrt"), "warning"))
    cuda_python = _major(f.cuda_python)
    if cuda_python and trt_cuda and cuda_python != trt_cuda:
        out.append(Finding(
            "cuda-python", f.cuda_python or "?",
            f"cuda-python {f.cuda_python} is for CUDA {cuda_python} but the TensorRT wheel ({f.tensorrt}) for CUDA "
            f"{trt_cuda}: the native runner would allocate with one CUDA runtime and run TensorRT on another",
            f"pip install '{CUDA_PYTHON.get(trt_cuda, f'cuda-python=={trt_cuda}.*')}'", ("tensorrt",), "warning"))
    if f.driver:
        driver = _release(f.driver)
        needs = [("onnxruntime-gpu", f.onnxruntime_gpu, f.ort_cuda, ("ort-cuda", "ort-tensorrt"),
                  f"pip install '{ORT_GPU_EXTRA[12]}' (onnxruntime-gpu for CUDA 12)"),
                 ("tensorrt", f.tensorrt, trt_cuda, ("tensorrt", "ort-tensorrt"),
                  f"pip install '{_trt_spec(12, 10)}' (TensorRT for CUDA 12)"),
                 ("cuda-python", f.cuda_python, cuda_python, ("tensorrt",), f"pip install '{CUDA_PYTHON[12]}'"),
                 ("torch", f.torch, f.torch_cuda, ("torch-cuda",), "install torch's CUDA 12 build (pytorch.org)")]
        for lib, version, cuda, affects, older in needs:
            if version and cuda in MIN_DRIVER and driver < MIN_DRIVER[cuda]:
                oldest = ".".join(f"{p:02d}" if i else str(p) for i, p in enumerate(MIN_DRIVER[cuda]))
                out.append(Finding(
                    lib, version,
                    f"{lib} {version} is built for CUDA {cuda}, which needs NVIDIA driver {oldest} or newer; this "
                    f"machine's driver is {f.driver}",
                    f"update the NVIDIA driver to {oldest} or newer" + (f", or {older}" if cuda == 13 else ""),
                    affects, "error"))
    return out


def report() -> dict:
    """The facts and findings, as `edgeseg info --json` shows them."""
    facts = gather_facts()
    return {"facts": facts.to_dict(), "findings": [x.to_dict() for x in diagnose(facts)]}
