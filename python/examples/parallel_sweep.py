"""A sweep spread over worker processes with concurrent.futures: each point is one call of
`slimlm.eval.sweep` with plain arguments (a model path, a method string) returning plain data (a
dict), so nothing but strings and dicts crosses process boundaries.

    python examples/parallel_sweep.py [--model ref-gpt2] [--workers 2] [--max-tokens 512]

Each worker computes on one thread (`threads=1`), so N workers use N cores without oversubscription.

Ray, when one machine is not enough: the same function becomes a remote task and the pool a cluster,
nothing else changes:

    import ray
    ray.init(address="auto")                     # or ray.init() on one machine
    remote_point = ray.remote(num_cpus=1)(point)
    results = ray.get([remote_point.remote(model, p, max_tokens) for p in POINTS])

Every node needs `pip install ./python` (or the wheel) and the model directory and UDHR corpus at the
same path (a shared file system, or pass `corpus=` per node); the results are the same dicts.
"""

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

import slimlm
from _common import MODELS, UDHR

POINTS = ["int8", "int8:g64", "f16", "lowrank:r32:int8", "lowrank:r64:int8", "lowrank:r96:int8", "lowrank:r128:int8", "lowrank:e0.9:int8"]


def point(model: str, method: str, max_tokens: int) -> dict:
    """One sweep point: plain arguments in, the point's result (a dict) out."""
    r = slimlm.eval.sweep(model, points=[method], corpus=str(UDHR), max_tokens=max_tokens, threads=1)
    p = r["points"][0]
    p["reference_bytes"] = r["reference_bytes"]
    return p


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="ref-gpt2")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--max-tokens", type=int, default=512)
    a = ap.parse_args()
    model = str(MODELS / a.model)

    t = time.perf_counter()
    with ProcessPoolExecutor(a.workers) as ex:
        futures = [ex.submit(point, model, m, a.max_tokens) for m in POINTS]
        results = [f.result() for f in futures]
    print(f"{len(POINTS)} points on {a.workers} processes in {time.perf_counter() - t:.1f} s\n")

    langs = [l["lang"] for l in results[0]["languages"]]
    print(f"{'point':<20}{'MB':>8}{'ratio':>7}{'mean':>9}" + "".join(f"{l:>10}" for l in langs))
    for p in sorted(results, key=lambda p: p["file_bytes"]):
        print(
            f"{p['label']:<20}{p['file_bytes'] / 1e6:>8.2f}{p['size_ratio']:>7.3f}"
            f"{100 * p['disparity']['mean_degradation']:>+8.2f}%"
            + "".join(f"{100 * l['degradation']:>+9.2f}%" for l in p["languages"])
        )


if __name__ == "__main__":
    main()
