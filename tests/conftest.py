from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMA_PATH = REPO / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(scope="session")
def schema():
    with open(SCHEMA_PATH) as fh:
        return yaml.safe_load(fh)


@pytest.fixture()
def default_config():
    with open(REPO / "config.yaml") as fh:
        return yaml.safe_load(fh)
