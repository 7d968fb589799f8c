"""dspark_trainer: the DSpark draft model, its data path and its distributed trainer.

Importing this package (and its ``config`` subpackage) never imports torch, so the
operator image can share the configuration models without it.
"""

__version__ = "0.1.0"
