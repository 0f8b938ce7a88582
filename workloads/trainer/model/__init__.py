"""What is trained: the Apertus model and its shape presets."""

from .args import PRESETS, ModelArgs, count_params, flops_per_token, get_preset
from .model import XIELU, Transformer

__all__ = ["PRESETS", "ModelArgs", "Transformer", "XIELU", "count_params", "flops_per_token", "get_preset"]
