"""Train, and the levers that improve a model: by code (`tune`, `improve`) or by data (`cleaning`).

- `loop`: `train(model, data, TrainConfig)`, the plain training loop.
- `distributed`: the same loop on several processes (torchrun and DistributedDataParallel).
- `pretrain`: self-supervised pretraining of a backbone on unlabeled images (SimCLR).
- `semisup`: semi-supervised training on a pool of unlabeled images (FixMatch, `train(unlabeled=...)`).
- `tune`: Optuna search over hyperparameters and architectures.
- `cleaning`: label issues (cleanlab on out-of-fold probabilities), near duplicates, outliers.
- `improve`: the model lever against the data lever on the same budget.
"""

from datamoat.train.epoch import detect_plateau
from datamoat.train.loop import PLATEAU_ADVICE, TrainConfig, set_threads, train
from datamoat.train.run import train_in_workspace

__all__ = ["PLATEAU_ADVICE", "TrainConfig", "detect_plateau", "set_threads", "train", "train_in_workspace"]
