"""Fine-tuning jobs on fastbert's heads: reading labelled files, the Trainer run, metrics and predictions.

``fastbert finetune classify|pair|regress`` and ``fastbert predict`` (fastbert/cli/finetune.py) call
``finetune`` and ``predict`` here; the data and metrics of each task family live in ``sequence``.
"""

from .finetune import TASKS, finetune
from .predict import predict

__all__ = ["TASKS", "finetune", "predict"]
