"""Shared fixtures: the tiny config, with word banks cached once per session."""

import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="session")
def bank_cache_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("word_banks"))


@pytest.fixture
def tiny_config(bank_cache_dir):
  from configs import tiny
  config = tiny.get_config()
  config.data.cache_dir = bank_cache_dir
  return config
