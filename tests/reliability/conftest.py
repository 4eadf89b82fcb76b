"""Inputs shared by the reliability tests, built once per session: a small demo corpus and a tiny Qwen2.5-VL."""
from pathlib import Path

import pytest

from corpora.demo import build_demo
from stages.model import build_tiny


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    return build_demo(tmp_path_factory.mktemp("demo"), n_train=16, n_eval=8, image_size=56)


@pytest.fixture(scope="session")
def tiny(tmp_path_factory) -> Path:
    return build_tiny("qwen2_5_vl", tmp_path_factory.mktemp("tiny") / "qwen2_5_vl")
