import os
import tempfile
from pathlib import Path

import pytest
import torch

# Tests never reach a model hub; loaders must answer from local files or fail clearly.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Records and leaderboards written by default go to a folder of this test session, never the user's home; the
# caches (features, tuned models) stay where they were, shared between sessions.
os.environ.setdefault("AIMV2_EVAL_CACHE", str(Path(os.environ.get("AIMV2_EVAL_HOME", "~/.cache/aimv2-eval")).expanduser()))
os.environ["AIMV2_EVAL_HOME"] = tempfile.mkdtemp(prefix="aimv2-eval-home-")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """Small models and per-sample ops run faster on one intra-op thread (2 contend on a 2-core machine).

    Test modules of many small CPU ops opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
