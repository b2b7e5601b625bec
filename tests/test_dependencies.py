"""Reproducible installs: every package the code and the tests import is declared in
pyproject.toml, and the lock files pin the whole tree (with hashes) at the versions pyproject.toml
names, so a rebuild next month installs the same program."""
import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from tests.conftest import REPO

CODE_DIRS = ["training", "handler", "harness", "benchmarks", "tests", "deploy"]


def requirement_name(spec: str) -> str:
    return re.match(r"[A-Za-z0-9._-]+", spec).group(0).lower().replace("_", "-")


def declared() -> dict:
    """{distribution name: pinned version} over dependencies and every extra."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [spec for extra in project["optional-dependencies"].values()
                                       for spec in extra]
    return {requirement_name(spec): spec.split("==", 1)[1].split(";")[0].strip()
            for spec in specs}


def imported_modules() -> set[str]:
    local = {path.name for path in REPO.iterdir() if path.is_dir()} | {
        path.stem for directory in CODE_DIRS for path in (REPO / directory).rglob("*.py")}
    modules = set()
    for directory in CODE_DIRS:
        for path in (REPO / directory).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return {module for module in modules
            if module not in sys.stdlib_module_names and module not in local}


def locked(name: str) -> dict:
    """{package: version} of a lock file; asserts that every pin carries hashes."""
    text = (REPO / name).read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9._-]+)==(\S+)", text, re.M))
    blocks = re.split(r"\n(?=[A-Za-z0-9._-]+==)", text)
    unhashed = [block.split()[0] for block in blocks[1:] if "--hash=sha256:" not in block]
    assert not unhashed, f"{name}: pins without hashes: {unhashed}"
    return {package.lower().replace("_", "-"): version for package, version in pins.items()}


def test_every_imported_package_is_declared():
    distributions = packages_distributions()
    names = declared()
    missing = {}
    for module in sorted(imported_modules()):
        provided_by = {requirement_name(d) for d in distributions.get(module, [])}
        if not provided_by:
            continue  # an optional import that is not installed here (e.g. a GPU-only path)
        if not provided_by & set(names):
            missing[module] = sorted(provided_by)
    # torch-model-archiver ships model_archiver, TorchServe ships ts: both declared
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def first_party_imports(path: Path) -> set[str]:
    """The repository's own modules `path` imports, dotted ("benchmarks.gpu", "tests.conftest")."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return {name for name in names if name.split(".")[0] in
            {"handler", "training", "harness", "benchmarks", "tests"}}


# handler <- training <- benchmarks, with harness (what tests and benchmarks share) and tests
# on the side: what each layer may not import
FORBIDDEN = {"handler": {"training", "harness", "benchmarks", "tests"},
             "training": {"harness", "benchmarks", "tests"},
             "harness": {"benchmarks", "tests"},
             "benchmarks": {"tests"},
             "tests": {"benchmarks"}}


def test_no_import_runs_back_up_a_layer_and_no_test_imports_another():
    wrong = []
    for layer, forbidden in FORBIDDEN.items():
        for path in sorted((REPO / layer).rglob("*.py")):
            for name in first_party_imports(path):
                top = name.split(".")[0]
                other_test = top == "tests" and name.split(".")[-1].startswith("test_")
                if top in forbidden or other_test:
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert not wrong, wrong


def test_lock_files_pin_everything_at_the_declared_versions():
    names = declared()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    runtime = {requirement_name(spec) for spec in project["dependencies"]}
    runtime_lock, dev_lock = locked("requirements.lock"), locked("requirements-dev.lock")
    for name, version in names.items():
        if name == "torch":  # installed from its pin on its own: its wheel differs by platform
            assert "torch" not in dev_lock and "torch" not in runtime_lock
            continue
        assert dev_lock.get(name) == version, f"requirements-dev.lock: {name} {dev_lock.get(name)}"
        if name in runtime:
            assert runtime_lock.get(name) == version, f"requirements.lock: {name}"
    # the image and the test venv run the same versions of what they share
    shared = set(runtime_lock) & set(dev_lock)
    assert {p: runtime_lock[p] for p in shared} == {p: dev_lock[p] for p in shared}
    assert len(dev_lock) > 2 * len(names)  # the transitive tree, not just the direct pins
