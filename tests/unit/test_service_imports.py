"""No service package imports another (issue "one acting loop"): what two services share lives in shared/ or in
services/common; services/stack (the orchestrator) and services/cli (the command line) may import services."""

from __future__ import annotations

import ast
import pathlib

SERVICES = pathlib.Path(__file__).resolve().parents[2] / "services"
SHARED_OK = {"common", "cli", "stack"}


def _imports(path: pathlib.Path) -> set[str]:
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      out.add(node.module)
    elif isinstance(node, ast.Import):
      out.update(a.name for a in node.names)
  return out


def test_no_service_imports_another():
  bad = []
  for pkg in sorted(p for p in SERVICES.iterdir() if p.is_dir() and p.name not in SHARED_OK | {"__pycache__"}):
    for f in pkg.rglob("*.py"):
      for mod in _imports(f):
        parts = mod.split(".")
        if parts[0] == "services" and len(parts) > 1 and parts[1] not in {pkg.name, "common"}:
          bad.append(f"{f.relative_to(SERVICES.parent)} imports {mod}")
  assert not bad, "\n".join(bad)


def test_shared_imports_no_service():
  shared = SERVICES.parent / "shared"
  bad = [f"{f.relative_to(shared.parent)} imports {mod}" for f in shared.rglob("*.py") for mod in _imports(f)
         if mod.split(".")[0] == "services"]
  assert not bad, "\n".join(bad)
