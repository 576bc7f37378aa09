"""Scenes: the Scenario pytree, padding to fixed caps, readers, the synthetic generator and rendering."""

from shared.scenes import gpudrive, padding, types
from shared.scenes.gpudrive import SceneError, read_scene
from shared.scenes.padding import RawScene, pad_scene
from shared.scenes.types import SceneConfig, SceneMeta, Scenario, stack, unstack
