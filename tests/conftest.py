"""Shared pytest set-up: every test runs offline.

Without these variables a Hugging Face hub call takes ~50 s to fail on a machine without
internet; with them it fails at once (or uses the local cache).
"""

import os

for _name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_name, "1")
# Do not set MPLBACKEND=Agg here: kernels inherit it and executed notebooks then lose every figure.
