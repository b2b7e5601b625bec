"""How the code reads: training/'s modules name what they build on at their top (a reader sees
the dependency graph there), and no code comment or user document points at an issue number
(history lives in docs/EXPERIMENTS.md)."""
import ast
import re

from tests.conftest import REPO

FIRST_PARTY = {"handler", "training"}
USER_DOCS = ["README.md", "SECURITY.md", *sorted(
    str(path.relative_to(REPO)) for path in (REPO / "docs").glob("*.md")
    if path.name != "EXPERIMENTS.md")]
ISSUE = re.compile(r"\b[Ii]ssues?\s+(?:#\s*)?\d+|\(#\d+\)")


def imports_inside_functions(path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for inner in ast.walk(node):
            names = [inner.module or ""] if isinstance(inner, ast.ImportFrom) else [
                alias.name for alias in inner.names] if isinstance(inner, ast.Import) else []
            found += [f"{path.name}:{inner.lineno} {name}" for name in names
                      if name.split(".")[0] in FIRST_PARTY]
    return found


def test_training_modules_import_first_party_code_at_their_top():
    late = [hit for path in sorted((REPO / "training").glob("*.py"))
            for hit in imports_inside_functions(path)]
    assert not late, late


def test_the_check_sees_an_import_inside_a_function(tmp_path):
    path = tmp_path / "late.py"
    path.write_text("def f():\n    from handler.calibration import load_calibrator\n")
    assert imports_inside_functions(path) == ["late.py:2 handler.calibration"]


def test_no_code_comment_or_user_doc_names_an_issue_number():
    files = [*sorted((REPO / "handler").glob("*")), *sorted((REPO / "training").glob("*.py")),
             *sorted((REPO / "benchmarks").glob("*.py")), *(REPO / name for name in USER_DOCS)]
    hits = [f"{path.relative_to(REPO)}: {match.group(0)!r}" for path in files if path.is_file()
            for match in ISSUE.finditer(path.read_text())]
    assert not hits, hits
    assert ISSUE.search("tuned in issue\n# 24") and ISSUE.search("see (#24)")
