"""How long a worker takes to get its OpenVINO model, three ways: converting the HF model at
start (no IR in the archive), compiling the IR that training.archive packs, and compiling it
again from the compiled-model cache (a restart). This is what decided to convert at archive time.

    python -m benchmarks.openvino_start --run runs/quick [--repeat 3]

Each way runs in a fresh process (nothing cached in memory), best of --repeat.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
started = time.perf_counter()
from handler.runtime import load_runtime
model_dir, cache = sys.argv[1], sys.argv[2] or None
imported = time.perf_counter()
load_runtime(model_dir, "cpu", "bf16", "openvino", threads=2, cache_dir=cache)
print(json.dumps({"imports_s": imported - started, "model_s": time.perf_counter() - imported}))
"""


def one_start(model_dir: Path, cache: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-c", CHILD, str(model_dir), cache], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=600, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.openvino_start",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "quick")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    from training.archive import write_openvino_ir
    results = {}
    with tempfile.TemporaryDirectory(prefix="ov-start-") as tmp:
        hf_only, with_ir, cache = Path(tmp) / "hf", Path(tmp) / "ir", Path(tmp) / "cache"
        for directory in (hf_only, with_ir):
            directory.mkdir()
            for item in args.run.iterdir():
                if item.is_file():
                    os.symlink(item.resolve(), directory / item.name)
        write_openvino_ir(args.run, with_ir)
        ways = {"convert at worker start": (hf_only, ""),
                "IR from the archive": (with_ir, ""),
                "IR + compiled-model cache": (with_ir, str(cache))}
        one_start(with_ir, str(cache))  # fill the cache
        for name, (directory, cache_dir) in ways.items():
            runs = [one_start(directory, cache_dir) for _ in range(args.repeat)]
            best = min(runs, key=lambda r: r["model_s"])
            results[name] = {"model_s": round(best["model_s"], 2),
                             "imports_s": round(best["imports_s"], 2),
                             "all_model_s": [round(r["model_s"], 2) for r in runs]}
            print(f"{name:28s} model ready in {best['model_s']:.2f} s "
                  f"(imports {best['imports_s']:.2f} s), runs {results[name]['all_model_s']}",
                  flush=True)
    return results


if __name__ == "__main__":
    main()
