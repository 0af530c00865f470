"""What `training/train.py` is made of, importable by the scripts, the tests and later commands:

- `recipe.py`: `TrainConfig` and the per-architecture recipes, filled by argparse;
- `augment.py`: the augmentation that makes other people's handwriting look familiar;
- `loop.py`: the training data (MNIST, negatives, accepted feedback) and one epoch;
- `assess.py`: calibration, evaluation once on the test set, the report files;
- `reports.py`: the report plots (matplotlib); `provenance.py`: git commit and hardware.

Imports torch (with `models/`); nothing in the serving install imports this folder.
"""
