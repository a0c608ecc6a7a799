"""inspector: visual inspection trained on good parts only."""

import os

# Idle OpenMP threads (FAISS, torch) otherwise spin after each call and starve onnxruntime, the service's event
# loop and the next request on a busy 2-core line PC (service p50 search 27 ms passive vs 275 ms spinning,
# measured under load). OpenMP reads it once, when its runtime starts, so it is set on the package's first import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
