#!/usr/bin/env python3
"""Memory bandwidth probe, one thread (numpy): the best of --reps passes over a 1 GiB float32 array.
  read GB/s = 1 GiB / time of a.max()   (what a decode step does with the weights: stream them once);
  copy GB/s = 2 GiB / time of np.copyto(b, a)   (1 GiB read + 1 GiB written).
GB = 10^9 bytes. Prints one JSON object (peer "bandwidth")."""
import argparse
import json
import time

import numpy as np


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    n = int(a.gib * 2**30) // 4
    x = np.ones(n, np.float32)
    y = np.empty_like(x)
    y.fill(0)  # fault the pages in before timing
    read, copy = [], []
    for _ in range(a.reps):
        t = time.perf_counter()
        x.max()
        read.append(time.perf_counter() - t)
        t = time.perf_counter()
        np.copyto(y, x)
        copy.append(time.perf_counter() - t)
    print(json.dumps({"peer": "bandwidth", "versions": {"numpy": np.__version__}, "bytes": x.nbytes, "threads": 1,
                      "read_gb_per_s": x.nbytes / min(read) / 1e9, "copy_gb_per_s": 2 * x.nbytes / min(copy) / 1e9}))


if __name__ == "__main__":
    main()
