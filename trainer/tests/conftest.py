import os

import pytest
import torch

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


@pytest.fixture(autouse=True)
def _threads() -> None:
    # One thread: the CI machine has 2 cores shared with the TypeScript suite (see THREADS_HELP).
    torch.set_num_threads(1)


requires_fashion = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_DIR, "train-images-idx3-ubyte.gz")),
    reason=f"Fashion-MNIST idx files not in {FASHION_DIR} (apt-get install dataset-fashion-mnist)",
)
