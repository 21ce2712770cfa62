"""Safe checkpoints: weights in safetensors, the recipe to rebuild the model in JSON.

A checkpoint is a directory with two files:

* ``model.safetensors``: every tensor of the model's state dict (parameters and persistent buffers
  such as the routers' ``expert_bias``), dtypes kept;
* ``config.json``: the model's class and config (or constructor arguments), the name, dtype and
  shape of every tensor, the SHA-256 and size of ``model.safetensors``, the moelab and format
  versions, and the caller's metadata (see :mod:`moelab.checkpoints.config` for the layout).

``save_checkpoint(model, dir)`` then ``load_checkpoint(dir)`` gives a model whose tensors are equal
(``torch.equal``, same dtypes) to the saved ones, so its outputs and routing are identical;
``load_into(model, dir)`` fills an existing model in place and ``read_config(dir)`` reads only the
JSON (metadata included). Nothing is ever unpickled, writes are crash-safe, and every broken
checkpoint raises :class:`CheckpointError` naming the file and the fault. Expert-parallel models
save the full state dict (``save_checkpoint(model, dir, state_dict=full_state)``) and take their
slice from ``load_state(dir)``, which returns the checked config and the full state dict.
"""

from moelab.checkpoints.config import (
    FORMAT_VERSION,
    MODEL_CLASSES,
    CheckpointConfig,
    CheckpointError,
    TensorSpec,
)
from moelab.checkpoints.files import (
    CONFIG_NAME,
    WEIGHTS_NAME,
    load_checkpoint,
    load_into,
    load_state,
    read_config,
    save_checkpoint,
)

__all__ = [
    "CONFIG_NAME",
    "FORMAT_VERSION",
    "MODEL_CLASSES",
    "WEIGHTS_NAME",
    "CheckpointConfig",
    "CheckpointError",
    "TensorSpec",
    "load_checkpoint",
    "load_into",
    "load_state",
    "read_config",
    "save_checkpoint",
]
