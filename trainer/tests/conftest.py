import os

import pytest
import torch

FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(autouse=True)
def _threads() -> None:
    # One thread: the CI machine has 2 cores shared with the TypeScript suite (see THREADS_HELP).
    torch.set_num_threads(1)


def require_fashion(data_dir: str = FASHION_DIR) -> str:
    """Fails (never skips) when Fashion-MNIST is missing: scripts/setup.sh installs it, so a missing
    file is a broken setup that a skip would hide."""
    missing = [f for f in FASHION_FILES if not os.path.exists(os.path.join(data_dir, f))]
    if missing:
        pytest.fail(f"Fashion-MNIST is missing from {data_dir} ({', '.join(missing)}): "
                    "apt-get install dataset-fashion-mnist (scripts/setup.sh installs it)", pytrace=False)
    return data_dir


@pytest.fixture
def fashion_data() -> str:
    return require_fashion()


# Tests that read the real data set; they fail with the message above when it is missing.
requires_fashion = pytest.mark.usefixtures("fashion_data")
