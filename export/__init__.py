"""edgeseg.export: torch -> ONNX (fp32, mixed fp16), TensorRT engines, and the parity check every export passes."""
