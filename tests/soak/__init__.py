"""
The chaos soak (bench/soak.py): its schedule and checker, tested as pure
functions, and a 3-minute soak with a fixed seed on a lab of its own.
"""

import os
import sys

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "bench")
if BENCH not in sys.path:
    # The soak's package lives beside the benchmarks (bench/_soak).
    sys.path.append(BENCH)
