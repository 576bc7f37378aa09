"""shared.nets: flax policy/value networks.

Modules: `inputs` (NetInput, from_observation), `perceiver` and `mlp` (encoders), `heads` (policy/value heads and
the factorised categorical distribution), `actor_critic` (ActorCritic, NetConfig, presets, act, param_count).
"""

from shared.nets import actor_critic, heads, inputs, mlp, perceiver
from shared.nets.actor_critic import (
    ActOutput, ActorCritic, NetConfig, act, host_init, init_params, param_count, preset)
from shared.nets.inputs import InputShapes, NetInput, dummy_input, from_observation

__all__ = [
    "ActOutput", "ActorCritic", "InputShapes", "NetConfig", "NetInput", "act", "actor_critic", "dummy_input",
    "from_observation", "heads", "host_init", "init_params", "inputs", "mlp", "param_count", "perceiver", "preset",
]
