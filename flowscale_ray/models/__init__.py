"""Flow models behind one contract (see base.FlowModel) and the registry that builds them by name."""

from flowscale_ray.models.base import Condition, FlowModel, take_condition
from flowscale_ray.models.registry import MODELS, build_model, register_model

__all__ = ["MODELS", "Condition", "FlowModel", "build_model", "register_model", "take_condition"]
