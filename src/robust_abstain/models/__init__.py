"""Models: our small nets (:mod:`.nets`) and the paper's RobustBench models (:mod:`.zoo`).

Every model maps inputs in [0, 1] to logits, with any normalisation inside the model. Importing
this package does not import RobustBench (that happens on first use of the zoo functions)."""

from .nets import ARCHS, Normalize, build_model
from .zoo import (CORE_CHOICES, PAPER_MODELS, CoreChoice, UnsafeCheckpointError, ZooEntry,
                  build_zoo_architecture, fetch_model, load_zoo_model, unwrap_state_dict, zoo_path)

__all__ = [
    "ARCHS", "Normalize", "build_model",
    "CORE_CHOICES", "PAPER_MODELS", "CoreChoice", "UnsafeCheckpointError", "ZooEntry",
    "build_zoo_architecture", "fetch_model", "load_zoo_model", "unwrap_state_dict", "zoo_path",
]
