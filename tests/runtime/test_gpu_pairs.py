"""`edgeseg info` names a mismatched GPU library pair (library, version, fix) instead of a backend that fails at
first use. The installed distributions are faked at the metadata lookup: the diagnosis is what is tested."""

from __future__ import annotations

import json
import struct
from importlib import metadata as real_metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edgeseg.runtime import availability, gpu_pairs
from edgeseg.runtime.gpu_pairs import GpuFacts, diagnose, gather_facts, needed_libraries

ROOT = Path(__file__).resolve().parents[2]


def _elf(path: Path, needed: list[str]) -> Path:
    """A minimal ELF64 little-endian file: a .dynstr and a .dynamic section with one DT_NEEDED per name."""
    strings = b"\0" + b"".join(n.encode() + b"\0" for n in needed)
    offsets, at = [], 1
    for n in needed:
        offsets.append(at)
        at += len(n) + 1
    dynamic = b"".join(struct.pack("<qQ", 1, o) for o in offsets) + struct.pack("<qQ", 0, 0)
    str_off, dyn_off = 64, 64 + len(strings)
    sh_off = dyn_off + len(dynamic)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, sh_off)
    struct.pack_into("<HH", header, 0x3A, 64, 3)
    sections = (struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
                + struct.pack("<IIQQQQIIQQ", 0, 3, 0, 0, str_off, len(strings), 0, 0, 1, 0)  # SHT_STRTAB
                + struct.pack("<IIQQQQIIQQ", 0, 6, 0, 0, dyn_off, len(dynamic), 1, 0, 8, 16))  # SHT_DYNAMIC -> 1
    path.write_bytes(bytes(header) + strings + dynamic + sections)
    return path


class FakeMetadata:
    """Stands in for importlib.metadata: these distributions (name -> version, requires, files) and no others."""

    PackageNotFoundError = real_metadata.PackageNotFoundError

    def __init__(self, dists: dict[str, str], requires: dict[str, list[str]] | None = None,
                 files: dict[str, dict[str, Path]] | None = None) -> None:
        self.dists, self.reqs, self.files = dists, requires or {}, files or {}

    def version(self, name):
        if name not in self.dists:
            raise self.PackageNotFoundError(name)
        return self.dists[name]

    def requires(self, name):
        self.version(name)
        return self.reqs.get(name, [])

    def distribution(self, name):
        self.version(name)
        files = self.files.get(name, {})

        class Dist:
            def __init__(self):
                self.files = list(files)

            def locate_file(self, rel):
                return files[rel]

        return Dist()


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """Fake the installed distributions and the driver: installed({...}, driver="580.65.06", ...)."""

    def install(dists, *, requires=None, files=None, driver=None):
        monkeypatch.setattr(gpu_pairs, "metadata", FakeMetadata(dists, requires, files))
        proc = tmp_path / "driver-version"
        if driver:
            proc.write_text(f"NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  {driver}  Release Build  "
                            "(dvs-builder@U16)  Thu Jul 10 2025\nGCC version:  gcc version 12.3.0\n")
        monkeypatch.setattr(gpu_pairs, "DRIVER_FILE", proc)

    return install


def test_ort_gpu_with_tensorrt_11_names_library_version_and_fix(installed):
    # the case: [gpu] (onnxruntime-gpu 1.31.1 links libnvinfer.so.10) with `tensorrt>=10.8` -> 11.4
    installed({"onnxruntime-gpu": "1.31.1", "tensorrt": "11.4.0.106", "tensorrt-cu13": "11.4.0.106",
               "tensorrt-cu13-bindings": "11.4.0.106", "cuda-python": "13.4.4"},
              requires={"tensorrt": ["tensorrt_cu13==11.4.0.106"]}, driver="580.65.06")
    facts = gather_facts()
    assert (facts.ort_cuda, facts.ort_tensorrt, facts.ort_source) == (13, 10, "table")
    assert facts.tensorrt == "11.4.0.106" and facts.tensorrt_cuda == (13,)
    [finding] = diagnose(facts)
    assert finding.library == "tensorrt" and finding.version == "11.4.0.106" and finding.severity == "error"
    assert "onnxruntime-gpu 1.31.1" in finding.problem and "libnvinfer.so.10" in finding.problem
    assert finding.fix == ("pip uninstall -y tensorrt tensorrt-cu13 tensorrt-cu13-bindings "
                           "&& pip install 'tensorrt-cu13>=10.13.3.9,<11'")
    assert finding.affects == ("ort-tensorrt",)


def test_matched_pair_gives_no_warning(installed):
    # what `pip install '.[gpu,trt]'` resolves to on Python 3.11 (benchmarks/results/gpu-resolve/gpu+trt-py3.11.json)
    installed({"onnxruntime-gpu": "1.31.1", "tensorrt-cu13": "10.16.1.11", "tensorrt-cu13-bindings": "10.16.1.11",
               "tensorrt-cu13-libs": "10.16.1.11", "cuda-python": "13.4.4", "torch": "2.13.0+cu130"},
              driver="580.65.06")
    facts = gather_facts()
    assert facts.torch_cuda == 13 and facts.driver == "580.65.06"
    assert diagnose(facts) == []
    # and the CUDA 12 pair for drivers older than r580
    installed({"onnxruntime-gpu": "1.26.0", "tensorrt-cu12": "10.16.1.11", "cuda-python": "12.9.10",
               "torch": "2.13.0"}, requires={"torch": ['nvidia-cuda-runtime-cu12==12.8.90; platform_system == "Linux"']},
              driver="550.54.14")
    facts = gather_facts()
    assert (facts.ort_cuda, facts.torch_cuda) == (12, 12)
    assert diagnose(facts) == []


def test_both_onnxruntime_wheels_installed_is_named(installed):
    installed({"onnxruntime": "1.32.0", "onnxruntime-gpu": "1.31.1"})
    [finding] = diagnose(gather_facts())
    assert finding.library == "onnxruntime" and finding.version == "1.32.0"
    assert "onnxruntime-gpu 1.31.1" in finding.problem and "share the `onnxruntime` module" in finding.problem
    assert finding.fix == ("pip uninstall -y onnxruntime onnxruntime-gpu "
                           "&& pip install 'onnxruntime-gpu[cuda,cudnn]==1.31.1'")


def test_torch_and_ort_cuda_majors_differ(installed):
    installed({"onnxruntime-gpu": "1.31.1", "torch": "2.13.0+cu128"})
    [finding] = diagnose(gather_facts())
    assert (finding.library, finding.version, finding.severity) == ("torch", "2.13.0+cu128", "warning")
    assert "CUDA 12" in finding.problem and "CUDA 13" in finding.problem
    assert "CUDA 13 build" in finding.fix and "edgeseg[gpu-cu12]" in finding.fix


def test_cuda_13_wheels_on_an_older_driver(installed):
    installed({"onnxruntime-gpu": "1.31.1", "cuda-python": "13.4.4", "tensorrt-cu13": "10.16.1.11"},
              driver="550.54.14")
    findings = {f.library: f for f in diagnose(gather_facts())}
    assert set(findings) == {"onnxruntime-gpu", "cuda-python", "tensorrt"}
    ort = findings["onnxruntime-gpu"]
    assert ort.severity == "error" and "550.54.14" in ort.problem and "580.65.06" in ort.problem
    assert "edgeseg[gpu-cu12]" in ort.fix
    assert findings["cuda-python"].fix.endswith("pip install 'cuda-python>=12.6,<13'")
    # the same wheels on a new enough driver: nothing to say
    installed({"onnxruntime-gpu": "1.31.1", "cuda-python": "13.4.4", "tensorrt-cu13": "10.16.1.11"},
              driver="580.82.07")
    assert diagnose(gather_facts()) == []


def test_cuda_python_major_against_tensorrt_wheel(installed):
    installed({"tensorrt-cu12": "10.16.1.11", "cuda-python": "13.4.4"})
    [finding] = diagnose(gather_facts())
    assert (finding.library, finding.version, finding.affects) == ("cuda-python", "13.4.4", ("tensorrt",))
    assert finding.fix == "pip install 'cuda-python>=12.6,<13'"


def test_two_tensorrt_cuda_variants_conflict(installed):
    installed({"tensorrt-cu12": "10.16.1.11", "tensorrt-cu13": "10.16.1.11"})
    [finding] = diagnose(gather_facts())
    assert finding.severity == "error" and "CUDA 12 and 13" in finding.problem
    assert "pip uninstall -y tensorrt-cu12 tensorrt-cu13" in finding.fix


def test_linked_libraries_are_read_from_the_installed_provider(installed, tmp_path):
    # a build outside the table (a future release, or one from another index): its provider library decides
    trt_lib = _elf(tmp_path / "libonnxruntime_providers_tensorrt.so", ["libcublas.so.14", "libnvinfer.so.11",
                                                                       "libcudart.so.14", "libc.so.6"])
    installed({"onnxruntime-gpu": "1.40.0", "tensorrt-cu13": "10.16.1.11"},
              files={"onnxruntime-gpu": {"onnxruntime/capi/libonnxruntime_providers_tensorrt.so": trt_lib}})
    facts = gather_facts()
    assert (facts.ort_cuda, facts.ort_tensorrt, facts.ort_source) == (14, 11, "linked")
    libs = {f.library: f for f in diagnose(facts)}
    assert "libnvinfer.so.11" in libs["tensorrt"].problem
    # not in the table and nothing to read: unknown, and no guess
    installed({"onnxruntime-gpu": "1.40.0", "tensorrt-cu13": "11.4.0.106"})
    facts = gather_facts()
    assert (facts.ort_cuda, facts.ort_tensorrt, facts.ort_source) == (None, None, "unknown")
    assert diagnose(facts) == []


def test_needed_libraries_reads_real_and_synthetic_elf_files(tmp_path):
    import onnxruntime

    shared = Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime_providers_shared.so"
    assert {"libc.so.6", "libstdc++.so.6"} <= set(needed_libraries(shared))
    assert needed_libraries(_elf(tmp_path / "x.so", ["libnvinfer.so.10", "libcudart.so.13"])) == [
        "libnvinfer.so.10", "libcudart.so.13"]
    (tmp_path / "text").write_text("not an ELF file")
    assert needed_libraries(tmp_path / "text") is None
    assert needed_libraries(tmp_path / "missing.so") is None


def test_table_matches_the_measured_wheels():
    # ORT_GPU_BUILDS is what the PyPI wheels link (benchmarks/resolve_gpu_extras.py --ort-links)
    measured = json.loads((ROOT / "benchmarks/results/gpu-resolve/ort_gpu_links.json").read_text())["releases"]
    assert len(measured) >= 15
    for version, row in measured.items():
        cuda, trt = gpu_pairs.ort_build(version)
        assert gpu_pairs._soname_major(row["tensorrt"], "libnvinfer") == trt, version
        assert gpu_pairs._soname_major(row["cuda"], "libcudart") == cuda, version
    assert gpu_pairs.ort_build("1.32.0") is None and gpu_pairs.ort_build("1.17.1") is None


def test_driver_version_from_proc(tmp_path):
    legacy = tmp_path / "v"
    legacy.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.183.01  Sun May 12 19:39:15 UTC 2024\n")
    assert gpu_pairs.driver_version(legacy) == "535.183.01"
    assert gpu_pairs.driver_version(tmp_path / "absent") is None


def test_backend_status_and_info_json_carry_the_diagnosis(installed, monkeypatch):
    installed({"onnxruntime-gpu": "1.31.1", "tensorrt-cu13": "11.4.0.106"})
    # onnxruntime-gpu lists the TensorRT EP whatever TensorRT is installed: the listed provider is faked too
    monkeypatch.setattr(availability, "_onnxruntime_statuses", lambda: [
        availability.BackendStatus("ort-cpu", True, "onnxruntime 1.31.1"),
        availability.BackendStatus("ort-cuda", True, "CUDAExecutionProvider listed"),
        availability.BackendStatus("ort-tensorrt", True, "TensorrtExecutionProvider listed")])
    trt = availability.status("ort-tensorrt")
    assert not trt.usable and "libnvinfer.so.10" in trt.detail and "tensorrt-cu13>=10.13.3.9,<11" in trt.install_hint
    assert availability.status("ort-cuda").usable
    with pytest.raises(availability.BackendUnavailable, match="TensorRT 11.4.0.106 is installed"):
        availability.require("ort-tensorrt", "ONNX Runtime's TensorRT EP")

    from edgeseg.cli import app

    result = CliRunner().invoke(app, ["info", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    [finding] = report["diagnosis"]["findings"]
    assert finding["library"] == "tensorrt" and finding["version"] == "11.4.0.106"
    assert report["diagnosis"]["facts"]["onnxruntime_gpu"] == "1.31.1"
    assert next(b for b in report["backends"] if b["name"] == "ort-tensorrt")["usable"] is False
    text = CliRunner().invoke(app, ["info"])
    assert text.exit_code == 0 and "libnvinfer.so.10" in text.output and "tensorrt-cu13>=10.13.3.9" in text.output


def test_no_gpu_libraries_no_findings(installed):
    installed({"onnxruntime": "1.32.0", "torch": "2.13.0+cpu"})
    assert diagnose(gather_facts()) == [] and gather_facts() == GpuFacts(onnxruntime="1.32.0", torch="2.13.0+cpu")
