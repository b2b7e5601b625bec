"""What the tests need from outside the venv: prometheus and promtool, nginx, chromium and
chromedriver, kubectl, Docker. `make tools` installs the Debian ones and `make test` runs it,
so in CI (`bash .ci/run`, CI=true) a missing tool means the install broke and its tests FAIL;
elsewhere they skip and say what to install."""
import importlib
import os
import shutil


def in_ci() -> bool:
    """CI=true (GitHub Actions, GitLab and .ci/run set it; some runners say CI=1)."""
    return os.environ.get("CI", "").lower() in ("true", "1")


def missing(reason: str):
    """Stop the test: a skip saying `reason`, or under CI=true a failure."""
    import pytest
    if in_ci():
        pytest.fail(f"{reason}; under CI=true every tool is installed, so this fails",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def tool(name: str, install: str) -> str:
    """The path of the program `name`; `install` says where it comes from."""
    path = shutil.which(name)
    if path is None:
        missing(f"{name} is not installed ({install})")
    return path


def module(name: str, install: str):
    """The Python module `name` (pytest.importorskip, but failing under CI=true)."""
    try:
        return importlib.import_module(name)
    except ImportError as error:
        missing(f"{name} cannot be imported ({install}): {error}")
