"""The package's layout keeps its promises: no import cycle among its modules, every module
importable alone, no module grown past about 500 lines, and start-up free of heavy libraries."""

from __future__ import annotations

import ast
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "flexingest"
MAX_LINES = 520  # "no module over about 500 lines"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported_at_import_time(path: Path, name: str) -> set[str]:
    """The package modules that ``path`` imports at module level (not inside functions, not
    only for type checking): what makes an import cycle."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names if a.name.startswith("flexingest"))
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")
                    base = base[: len(base) - node.level + 1]
                    target = ".".join([*base, node.module] if node.module else base)
                else:
                    target = node.module or ""
                if target.startswith("flexingest"):
                    found.add(target)
                    found.update(f"{target}.{a.name}" for a in node.names)

    visit(tree.body)
    return found


def test_no_import_cycle_among_the_modules() -> None:
    known = modules()
    graph = {name: {m for m in imported_at_import_time(path, name) if m in known and m != name}
             for name, path in known.items()}
    visiting: list[str] = []
    done: set[str] = set()

    def walk(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, f"import cycle: {' -> '.join([*visiting[visiting.index(name):], name])}"
        visiting.append(name)
        for target in sorted(graph[name]):
            walk(target)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        walk(name)


def test_every_module_imports_alone_in_a_fresh_interpreter() -> None:
    def alone(name: str) -> tuple[str, int, str]:
        proc = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=60)
        return name, proc.returncode, proc.stderr[-2000:]

    with ThreadPoolExecutor(max_workers=4) as pool:
        names = sorted(n for n in modules() if n != "flexingest.__main__")  # that one runs the command line
        failures = [(n, err) for n, code, err in pool.map(alone, names) if code != 0]
    assert not failures, failures


def test_no_module_is_over_about_500_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    large = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not large, f"modules over {MAX_LINES} lines: {large}"


def test_loading_a_pipeline_imports_no_cloud_or_cluster_library(tmp_path: Path) -> None:
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text("version: 1\nconnectors:\n  - {name: docs, type: local, config: {path: .}}\n"
                        "steps: [extract_text]\nsyncs: [{name: docs, connector: docs}]\n")
    code = ("import sys\nfrom flexingest.loader import load_pipeline\nimport flexingest.cli, flexingest.runner\n"
            f"load_pipeline({str(pipeline)!r})\n"
            "heavy = ['s3fs', 'gcsfs', 'adlfs', 'botocore', 'aiobotocore', 'obstore', 'distributed', 'dask', "
            "'google.cloud.pubsub', 'azure.storage.queue', 'pypdfium2', 'fastapi', 'uvicorn']\n"
            "print([m for m in heavy if m in sys.modules])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", f"imported at start-up: {proc.stdout}"
