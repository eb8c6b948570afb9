"""Datasets: import, version, split and load."""

from datamoat.data.dataset import SPLITS, Dataset, load_dataset, make_dataset, stratified_splits
from datamoat.data.idx import read_idx
from datamoat.data.sources import (
    FASHION_CLASSES,
    FASHION_MNIST_DIR,
    fashion_mnist_missing,
    import_default,
    import_digits,
    import_fashion_mnist,
    import_folder,
    import_idx,
)

__all__ = [
    "SPLITS",
    "Dataset",
    "load_dataset",
    "make_dataset",
    "stratified_splits",
    "read_idx",
    "FASHION_CLASSES",
    "FASHION_MNIST_DIR",
    "fashion_mnist_missing",
    "import_default",
    "import_digits",
    "import_fashion_mnist",
    "import_folder",
    "import_idx",
]
