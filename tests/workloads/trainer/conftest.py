"""Fixtures for the trainer tests (helpers live in trainer_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def sample_prefix(tmp_path_factory) -> str:
    """The bundled sample text tokenized once for the whole session."""
    from workloads.trainer.data.prepare import prepare_sample_dataset

    return prepare_sample_dataset(tmp_path_factory.mktemp("sample"))
