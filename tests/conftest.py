import os

# Keep CPU test runs deterministic and small.
os.environ.setdefault("OMP_NUM_THREADS", "2")
