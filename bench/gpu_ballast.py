"""A smaller card on a big one: a process that takes all but CAP GiB of the GPU and holds it until its stdin closes.

    python bench/gpu_ballast.py --cap-gib 24      # prints one JSON line once the memory is held

Another process then finds about CAP GiB free, as on a card of that size: `torch.cuda.mem_get_info` and NVML both
count the ballast as used (`torch.cuda.set_per_process_memory_fraction` would cap the allocator alone, and the
trainer's memory plan reads the free memory). It takes the free memory less CAP after its own CUDA context exists,
so the next process sees CAP GiB less its own context, as it would on a real card of CAP GiB.
"""
from __future__ import annotations

import argparse
import json
import sys

GIB = 2**30


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cap-gib", type=float, required=True)
    args = p.parse_args()
    import torch

    if not torch.cuda.is_available():
        print(json.dumps({"held": 0, "why": "no CUDA GPU: nothing to hold"}), flush=True)
        return 0
    torch.cuda.init()
    free, total = torch.cuda.mem_get_info()
    take = int(free - args.cap_gib * GIB)
    block = torch.empty(max(take, 0), dtype=torch.uint8, device="cuda") if take > 0 else None
    free_now, _ = torch.cuda.mem_get_info()
    print(json.dumps({"held": take if block is not None else 0, "total": total, "free_after": free_now}), flush=True)
    sys.stdin.read()  # until the check closes the pipe (or ends)
    return 0


if __name__ == "__main__":
    sys.exit(main())
