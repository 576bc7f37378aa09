"""Shared fixtures: the real scene folder beside the repo (../shared/data), skipped cleanly when absent."""

from __future__ import annotations

import os
import pathlib

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REAL_SCENE_DIR = REPO_ROOT.parent / "shared" / "data" / "gpudrive_womd"


@pytest.fixture(scope="session")
def real_scene_dir() -> pathlib.Path:
  if not REAL_SCENE_DIR.is_dir():
    pytest.skip(f"real scenes not found at {REAL_SCENE_DIR}")
  return REAL_SCENE_DIR


@pytest.fixture(scope="session")
def real_scene_files(real_scene_dir) -> list[pathlib.Path]:
  return sorted(real_scene_dir.glob("*.json"))
