"""The model zoo and the `Model` handle every stage passes along."""

from datamoat.models.model import Model, load_model, new_model, save_model
from datamoat.models.zoo import ARCHS, ModelConfig, build, param_count, preset

__all__ = ["ARCHS", "Model", "ModelConfig", "build", "load_model", "new_model", "param_count", "preset", "save_model"]
