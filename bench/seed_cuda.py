#!/usr/bin/env python3
"""Run ../shared/bench/seed_baseline.py unchanged on a GPU: torch's default device set to CUDA, then the script.

    python bench/seed_cuda.py --seed-script ../shared/bench/seed_baseline.py -- --model DIR --data CSV ...

The seed script has no device option; with torch's default device set to CUDA, transformers loads the model
there and the tokenizer's tensors are made there, so the script's own code runs as it is. The model loads in
the dtype its folder was saved in (transformers' dtype "auto"): bench.py saves a bfloat16 copy for --bf16.
After the script, its peak CUDA memory is added to the JSON it wrote with --out.
(Untested in the session that wrote it: no GPU was lent.)
"""
import argparse, json, runpy, sys

import torch


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed-script", required=True)
    p.add_argument("args", nargs=argparse.REMAINDER)
    a = p.parse_args()
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    if not torch.cuda.is_available():
        sys.exit("seed_cuda.py: CUDA is not available")
    torch.set_default_device("cuda")
    sys.argv = [a.seed_script, *args]
    runpy.run_path(a.seed_script, run_name="__main__")
    torch.cuda.synchronize()
    if "--out" in args:
        out = args[args.index("--out") + 1]
        with open(out, encoding="utf-8") as f: res = json.load(f)
        res["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        res["device"] = torch.cuda.get_device_name(0)
        with open(out, "w", encoding="utf-8") as f: json.dump(res, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
