"""The setup (scripts/setup.sh) installs Fashion-MNIST, so a test that needs it fails when it is
missing, naming the Debian package, instead of being skipped and hiding the gap."""

import pytest

from trainer.tests.conftest import FASHION_DIR, require_fashion


def test_missing_data_set_fails_naming_the_debian_package(tmp_path):
    with pytest.raises(pytest.fail.Exception, match="apt-get install dataset-fashion-mnist") as err:
        require_fashion(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "train-images-idx3-ubyte.gz" in str(err.value)


def test_installed_data_set_passes():
    assert require_fashion() == FASHION_DIR
