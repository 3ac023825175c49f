"""edgeseg: few-shot CT organ segmentation at the clinical edge.

Keep this module import-light: `edgeseg.runtime` is a subpackage and must import on a
deployment box without torch.
"""

import os as _os
import sys as _sys

__version__ = "0.1.0"


def _quiet_telemetry() -> None:
    """Nothing outside `--out`: ONNX Runtime writes a device id and a telemetry database under
    ~/.cache/Microsoft/DeveloperTools, and `import openvino` a client id and usage counters under ~/intel.
    A hospital machine should not gain files, or send events, because a scan was segmented. Done here,
    before either library is imported by edgeseg: ONNX Runtime reads ORT_DISABLE_TELEMETRY at import; for
    OpenVINO, a missing `openvino_telemetry` package is the case it handles with its own no-op stub.
    EDGESEG_TELEMETRY=1 leaves both as they are.
    """
    if _os.environ.get("EDGESEG_TELEMETRY") == "1":
        return
    _os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    if "openvino" not in _sys.modules:
        _sys.modules.setdefault("openvino_telemetry", None)  # type: ignore[arg-type]


_quiet_telemetry()
