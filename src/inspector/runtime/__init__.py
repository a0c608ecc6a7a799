"""Running the feature network: onnxruntime on the line (no torch), torch and ONNX export when fitting.

    onnx.py          OnnxRunner: the exported graph under onnxruntime (imports no torch)
    torch_runner.py  TorchRunner: the same graph as a torch module (fitting side)
    export.py        torch module -> ONNX bytes (fitting side)

Both runners take and return numpy arrays, so a scorer never cares which one it got.
"""
