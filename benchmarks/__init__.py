"""Benchmark harness: an asyncio/aiohttp load generator, a seed-style Flask baseline, an
in-process limit and TorchServe launched per serving configuration. Entry point:

    python -m benchmarks.run --run runs/quick --data $IMDB_DATA_DIR   (or: make bench)
"""
