"""Fixtures for the tests of the integration assets. They need neither the Agent nor the compiled core.

Run them alone with:  pytest tests/assets --confcutdir=tests/assets
(--confcutdir keeps pytest from loading tests/conftest.py, which imports the compiled check.)
"""

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from assets_common import ASSETS, load_yaml  # noqa: E402


@pytest.fixture(scope='session')
def pipeline_file():
    return load_yaml(ASSETS / 'logs' / 'huntress.yaml')


@pytest.fixture(scope='session')
def pipeline(pipeline_file):
    return pipeline_file['pipeline']
