"""Puts the SDK on the path, so `python3 -m pytest plugins/sdk-python/tests` runs from anywhere
(no component and no wit_world needed: these are the pure-Python parts)."""

import sys
from pathlib import Path

SDK = Path(__file__).resolve().parents[1]
if str(SDK) not in sys.path:
    sys.path.insert(0, str(SDK))
