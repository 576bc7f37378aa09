"""Scenes: the Scenario pytree, padding to fixed caps, readers, native shards, scene sources (synthetic or files),
the synthetic generator, rendering."""

from shared.scenes import dataset, gpudrive, native, padding, source, types
from shared.scenes.gpudrive import SceneError, read_scene
from shared.scenes.padding import RawScene, pad_scene
from shared.scenes.types import SceneConfig, SceneMeta, Scenario, stack, unstack
