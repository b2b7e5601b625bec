"""The Docker engine the docker-marked tests (tests/test_docker_e2e.py, tests/test_swarm.py)
build and run on: which images, a bounded `run`, and the check that an engine answers and the
base image is present (nothing is ever pulled)."""
import os
import subprocess

from harness.tools import missing

BASE_IMAGE = os.environ.get("BASE_IMAGE", "python:3.11-slim-bookworm")
IMAGE = os.environ.get("BERT_SENTIMENT_IMAGE", "bert-sentiment:latest")
BUILD_TIMEOUT = float(os.environ.get("DOCKER_E2E_BUILD_TIMEOUT", 3600))  # a cold build downloads torch
LOOPBACK = "127.0.0.1"


def run(cmd, timeout=60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kwargs)


def engine(info_format: str | None = None) -> str:
    """`docker info` (with --format `info_format`) once an engine answers it and BASE_IMAGE is
    here; otherwise harness.tools.missing: a skip, a failure under CI=true."""
    command = ["docker", "info", *(["--format", info_format] if info_format else [])]
    try:
        info = run(command, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as error:  # no docker binary, or it hangs
        missing(f"no Docker engine: {error}")
    if info.returncode != 0:
        missing(f"no Docker engine answers `docker info`: {info.stderr.strip()[:300]}")
    if run(["docker", "image", "inspect", BASE_IMAGE], timeout=30).returncode != 0:
        missing(f"base image {BASE_IMAGE} is not present locally (docker pull it, or on an "
                "offline machine: export \"$(bash ../shared/ci/docker-offline.sh | tail -n1)\")")
    return info.stdout
