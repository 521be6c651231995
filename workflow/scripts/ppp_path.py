"""Put the checkout's root on sys.path, so every job imports `ppp` from this checkout in any software
environment: the venv installs it (editable), a per-rule conda environment does not."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
