"""Training jobs: LoRA adapters for served models, and classifiers exported to ONNX.

- `service.py`: TrainingService, what HTTP (server/api/train.py), the tools (tools/builtin/training.py)
  and `corral train` call; built once in server/services.py.
- `spec.py` (what a job is asked to do) → `base_model.py` (the base found and checked, LoRA targets) and
  `dataset.py` (JSONL lines checked, rendered through the served model's template, tokenized).
- `jobs.py` (jobs and their progress lines in SQLite or PostgreSQL) and `runner.py` (one thread running
  them in turn, with cancel and stop checks between steps).
- `loop.py`: the training loop with checkpoints and resume; `lm.py` (causal LM → GGUF LoRA → the output
  model), `classifier_trainer.py` and `onnx_export.py` (classifier → merged → ONNX → stored), `merge.py`
  (a GGUF LoRA merged into its base's weights), `workspace.py` (the store and device a trainer uses).

torch, transformers and peft (the `adapters` extra) are imported only by the work that needs them.
"""

from .errors import TrainingError, TrainingUnavailable
from .service import TrainingService
from .spec import LoraSettings, TrainingSettings, TrainSpec

__all__ = ["LoraSettings", "TrainSpec", "TrainingError", "TrainingService", "TrainingSettings", "TrainingUnavailable"]
