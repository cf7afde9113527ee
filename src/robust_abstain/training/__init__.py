"""Training and fine-tuning: the loop (:func:`fit`), its config, exact resume, validation, and the
library behind the training stages (:func:`train_model`)."""

from .batches import EpochBatches, batch_seed, epoch_streams, seeded_subset
from .config import AMP, SELECT, Plan, TrainConfig, budget, lr_at
from .loop import TOLERANCE, WARN_NAT_DROP, fit, train_step
from ..digests import source_fingerprint, sources_digest, tensor_digest
from .resume import STATE_DIR, resume_key, state_dir_for
from .run import model_spec, sweep_entry, train_model
from .validate import validate

__all__ = ["AMP", "SELECT", "STATE_DIR", "TOLERANCE", "WARN_NAT_DROP", "EpochBatches", "Plan", "TrainConfig",
           "batch_seed", "budget", "epoch_streams", "fit", "lr_at", "model_spec", "resume_key", "seeded_subset",
           "source_fingerprint", "sources_digest", "state_dir_for", "sweep_entry", "tensor_digest",
           "train_model", "train_step", "validate"]
