"Shared fixtures: the project folder, offline settings, and the real data when it is present."
import os, sys, subprocess
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
ROOT = Path(__file__).resolve().parents[1]
SHARED_KO = ROOT.parent/'shared'/'data'/'ko'
BIN = Path(sys.executable).parent


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: trains a model for more than a few seconds (still run by make test and CI)')


@pytest.fixture
def root():
    return ROOT


@pytest.fixture
def real_ko():
    "The Korean competition data in ../shared/data/ko, or a skip that says why."
    if not (SHARED_KO/'dev.csv').exists():
        pytest.skip(f'real data not present at {SHARED_KO} (it is on CI and developer machines only)')
    return SHARED_KO


def dialsum(*args, cwd=ROOT, timeout=900):
    "Run the `dialsum` command line and return the completed process."
    return subprocess.run([str(BIN/'dialsum'), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def run_folders(runs_dir):
    "The run folders in `runs_dir` (not index.csv, history/ or latest_submission.csv)."
    return sorted(p for p in Path(runs_dir).iterdir() if (p/'metadata.json').exists())
