"""Shared pieces: data, the CLI's folds and metrics (from experiments/embeddings/common.py)."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), '..', 'embeddings'))
from common import load, folds, metrics  # noqa: E402,F401
OUT = os.environ.get('OUT', 'target/negative').rstrip('/') + '/'
