"""Write examples/cnn.onnx: tvmcompress.zoo's small CNN (BatchNorm, residual, depthwise and
grouped convs, pooling, concat), 3x32x32 input ``x`` with a dynamic batch, output ``y``."""

import sys
from pathlib import Path

import onnx

from tvmcompress import zoo

if __name__ == "__main__":
    path = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("cnn.onnx"))
    onnx.save(zoo.build("cnn", batch=1), str(path))
    print(f"wrote {path}")
