"""Training: the one loop, checkpoints, statistics, data streaming and data parallelism."""
from .checkpoint import CheckpointError, load_snapshot, save_snapshot  # noqa: F401
from .loop import Trainer, TrainingDiverged, train  # noqa: F401
