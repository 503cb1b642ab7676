"""Model zoo, safe model I/O and the training loop."""

from bastion.models.io import LoadedModel, load_model, save_model
from bastion.models.zoo import MODEL_NAMES, ModelSpec, build_model

__all__ = ["MODEL_NAMES", "LoadedModel", "ModelSpec", "build_model", "load_model", "save_model"]
