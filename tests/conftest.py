import os

import torch

# One intra-op thread: the tiny test models gain nothing from more, and with several processes
# on a 2-core machine OpenMP threads spinning at barriers made forwards ~25x slower (measured).
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ.get("DOODL_TEST_THREADS", "1")))
