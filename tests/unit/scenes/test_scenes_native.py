"""Native shards: exact round trip of the real scenes, atomic writes, and one SceneError per kind of damage."""

from __future__ import annotations

import json
import struct
import zipfile

import jax
import numpy as np
import pytest

from shared.scenes import gpudrive, native, types
from shared.scenes.gpudrive import SceneError

CONFIG = types.SceneConfig()


@pytest.fixture(scope="module")
def real(real_scene_files):
  pairs = [gpudrive.read_scene(str(f), CONFIG) for f in real_scene_files]
  return [s for s, _ in pairs], [m for _, m in pairs]


@pytest.fixture(scope="module")
def shard(real, tmp_path_factory):
  path = tmp_path_factory.mktemp("shards") / f"real{native.SHARD_SUFFIX}"
  native.write_shard(path, real[0][:3], real[1][:3], CONFIG)
  return path


def test_round_trip_is_exact(real, tmp_path):
  scenarios, metas = real
  path = tmp_path / f"all{native.SHARD_SUFFIX}"
  native.write_shard(path, scenarios, metas, CONFIG)
  batch, metas2, config2 = native.read_shard(path)
  want = types.stack(scenarios)
  assert batch.objects.x.shape == (10, 128, 91) and batch.roads.x.shape == (10, 20000)
  for name, a in native.flatten(want).items():
    b = native.flatten(batch)[name]
    assert a.dtype == b.dtype and np.array_equal(a, b), name
  assert metas2 == metas and config2 == CONFIG
  assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
  assert oct(path.stat().st_mode & 0o777) == "0o644"


def test_leaf_names_cover_the_pytree(real):
  assert len(native.leaf_names()) == len(jax.tree.leaves(real[0][0])) == 15 + 7 + 5
  assert native.leaf_specs(CONFIG)["objects.x"] == (np.dtype(np.float32), (128, 91))
  assert native.leaf_specs(CONFIG)["lights.valid"] == (np.dtype(bool), (16, 91))


def test_write_rejects_wrong_caps_and_mismatched_metas(real, tmp_path):
  scenarios, metas = real
  with pytest.raises(ValueError, match="objects.x"):
    native.write_shard(tmp_path / "x.dlshard.npz", scenarios[:1], metas[:1], types.SceneConfig(max_objects=64))
  with pytest.raises(ValueError, match="as many metas"):
    native.write_shard(tmp_path / "x.dlshard.npz", scenarios[:2], metas[:1], CONFIG)
  assert not list(tmp_path.iterdir())


def _arrays(path) -> dict[str, np.ndarray]:
  with np.load(path, allow_pickle=False) as z:
    return {k: z[k] for k in z.files}


def _rewrite(src, dst, edit) -> None:
  """Rewrites a shard through a valid zip writer (so the zip CRCs are right) after `edit(arrays, header)`."""
  arrays = _arrays(src)
  header = json.loads(arrays[native.HEADER_KEY].tobytes())
  edit(arrays, header)
  arrays[native.HEADER_KEY] = np.frombuffer(json.dumps(header).encode(), np.uint8)
  np.savez(dst, **arrays)


def _error(path) -> SceneError:
  with pytest.raises(SceneError) as e:
    native.read_shard(path)
  assert e.value.path == str(path) and str(e.value).startswith(f"{path.name}: field '{e.value.field}'")
  return e.value


def _bump(arrays, header):
  arrays["objects.x"] = arrays["objects.x"].copy()
  arrays["objects.x"][1, 2, 30] += 0.5


@pytest.mark.parametrize("edit, field, words", [
    (_bump, "sha256", "checksum"),
    (lambda a, h: h.__setitem__("version", native.FORMAT_VERSION + 1), "version", "unsupported version"),
    (lambda a, h: h.__setitem__("format", "other"), "format", "expected"),
    (lambda a, h: a.pop("roads.valid"), "roads.valid", "missing array"),
    (lambda a, h: a.__setitem__("objects.yaw", a["objects.yaw"].astype(np.float64)), "objects.yaw", "float64"),
    (lambda a, h: a.__setitem__("lights.state", a["lights.state"][:, :8]), "lights.state", "expected int32"),
    (lambda a, h: a.__setitem__("extra", np.zeros(3)), "extra", "unexpected"),
    (lambda a, h: h["metas"].pop(), "metas", "num_scenes is 3"),
    (lambda a, h: h["config"].__setitem__("max_wheels", 4), "config", "malformed"),
    (lambda a, h: h["config"].__setitem__("max_objects", 0), "config", "out of range"),
    (lambda a, h: h["config"].__setitem__("max_road_points", 10**12), "config", "out of range"),
])
def test_damaged_shard_names_the_field(shard, tmp_path, edit, field, words):
  bad = tmp_path / f"bad{native.SHARD_SUFFIX}"
  _rewrite(shard, bad, edit)
  e = _error(bad)
  assert e.field == field and words in str(e)


def _data_offset(path, member: str) -> tuple[int, int]:
  """(offset, size) of a stored zip member's bytes, read from its local header."""
  with zipfile.ZipFile(path) as zf:
    info = zf.getinfo(member)
  raw = path.read_bytes()
  name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26: info.header_offset + 30])
  return info.header_offset + 30 + name_len + extra_len, info.compress_size


def test_flipped_byte_in_an_array(shard, tmp_path):
  off, size = _data_offset(shard, "roads.x.npy")
  raw = bytearray(shard.read_bytes())
  raw[off + size - 7] ^= 0x10
  bad = tmp_path / f"flip{native.SHARD_SUFFIX}"
  bad.write_bytes(bytes(raw))
  e = _error(bad)
  assert e.field == "roads.x" and "corrupt" in str(e)


def test_flipped_byte_in_the_header(shard, tmp_path):
  off, size = _data_offset(shard, f"{native.HEADER_KEY}.npy")
  raw = bytearray(shard.read_bytes())
  raw[off + size - 20] ^= 0x01
  bad = tmp_path / f"fliph{native.SHARD_SUFFIX}"
  bad.write_bytes(bytes(raw))
  assert _error(bad).field == native.HEADER_KEY


def test_truncated_and_foreign_files(shard, tmp_path):
  cut = tmp_path / f"cut{native.SHARD_SUFFIX}"
  cut.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
  assert _error(cut).field == "<file>"
  plain = tmp_path / f"plain{native.SHARD_SUFFIX}"
  np.savez(plain, a=np.zeros(3))
  assert _error(plain).field == native.HEADER_KEY
  assert _error(tmp_path / f"absent{native.SHARD_SUFFIX}").field == "<file>"
