"""No pickle anywhere in shared/ and services/, and shared/wire + shared/telemetry never import jax."""

from __future__ import annotations

import ast
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
BANNED_MODULES = {"pickle", "cPickle", "cloudpickle", "dill", "msgpack_numpy", "joblib", "shelve"}
NO_JAX = ("shared/wire", "shared/telemetry")


def _py_files(*dirs: str) -> list[pathlib.Path]:
  return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def _imports(path: pathlib.Path) -> set[str]:
  tree = ast.parse(path.read_text(), str(path))
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names |= {a.name.split(".")[0] for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      names.add(node.module.split(".")[0])
    elif isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("__import__", "import_module"):
      names |= {a.value.split(".")[0] for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
  return names


def test_no_pickle_imports_or_calls():
  files = _py_files("shared", "services")
  assert len(files) > 10
  bad = [f"{p.relative_to(ROOT)}: {sorted(_imports(p) & BANNED_MODULES)}" for p in files
         if _imports(p) & BANNED_MODULES]
  call = re.compile(r"\b(pickle|cloudpickle|dill)\.(loads?|dumps?)\b|allow_pickle\s*=\s*True|msgpack_numpy")
  bad += [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in files for m in call.finditer(p.read_text())]
  assert not bad, bad


def test_np_load_passes_allow_pickle_false():
  bad = []
  for p in _py_files("shared", "services"):
    for node in ast.walk(ast.parse(p.read_text())):
      if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
          and getattr(node.func.value, "id", "") in ("np", "numpy")):
        kw = {k.arg: k.value for k in node.keywords}
        if not (isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value is False):
          bad.append(f"{p.relative_to(ROOT)}:{node.lineno}")
  assert not bad, bad


def test_scanner_catches_a_planted_pickle(tmp_path):
  f = tmp_path / "evil.py"
  f.write_text("import os\nfrom cloudpickle import loads\nx = __import__('dill')\n")
  assert _imports(f) & BANNED_MODULES == {"cloudpickle", "dill"}


def test_wire_and_telemetry_do_not_import_jax_by_ast():
  files = _py_files(*NO_JAX)
  assert len(files) >= 6
  for p in files:
    assert not _imports(p) & {"jax", "jaxlib", "flax", "chex", "optax"}, p


def test_wire_and_telemetry_do_not_import_jax_at_runtime():
  mods = [".".join(p.relative_to(ROOT).with_suffix("").parts) for p in _py_files(*NO_JAX)]
  code = ("import sys\n" + "".join(f"import {m}\n" for m in mods) +
          "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib', 'flax'))\nprint(bad)\n")
  out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == "[]"
