"Shared fixtures: the project folder, offline settings, and the real data when it is present."
import os, sys, subprocess, tempfile
from pathlib import Path
import pytest

os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TOKENIZERS_PARALLELISM', 'false')
ROOT = Path(__file__).resolve().parents[1]
SHARED_KO = ROOT.parent/'shared'/'data'/'ko'
BIN = Path(sys.executable).parent


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: trains a model for more than a few seconds (still run by make test and CI)')
    # the reliability tests log their cases (tests/casebook.py) into a file of this process's own, unless
    # tools/cases_page.py gave one; tests/test_reliability_page.py turns them into the page at the end of the session
    if os.environ.get(CASES_OUT) in (None, os.environ.get(SESSION_CASES)):
        os.environ[CASES_OUT] = os.environ[SESSION_CASES] = tempfile.mkstemp(prefix='dialsum-cases-', suffix='.jsonl')[1]


CASES_OUT, SESSION_CASES = 'DIALSUM_CASES_OUT', 'DIALSUM_SESSION_CASES'
OUTCOMES = {}  # 'test_file::test_name[id]' -> 'passed' | 'FAILED' | 'not run', as tools/cases_page.py reads JUnit XML


def pytest_collection_modifyitems(config, items):
    "The reliability page's check after every test whose cases it reads."
    items.sort(key=lambda item: item.path.stem == 'test_reliability_page' and item.name.endswith('this_session'))


def case_key(nodeid):
    "`tests/test_x.py::test_y[id]` -> `test_x::test_y[id]`, the name tools/cases_page.py gives a test."
    path, _, name = nodeid.partition('::')
    return f"{Path(path).stem}::{name}"


def pytest_runtest_logreport(report):
    "Every test's outcome (a failed setup, call or teardown fails it), for the reliability page."
    key, state = case_key(report.nodeid), OUTCOMES.get(case_key(report.nodeid), 'passed')
    if report.failed: state = 'FAILED'
    elif report.skipped and state != 'FAILED': state = 'not run'
    OUTCOMES[key] = state


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


# Sweeps (tests/test_sweep.py, tests/test_cli.py): smoke-sized configs, and one sweep shared by the tests that only read it.
SMOKE = ROOT/'configs'/'experiments'/'smoke.yaml'


@pytest.fixture(scope='session')
def sweep_configs(tmp_path_factory):
    "a.yaml and b.yaml complete (other learning rates, so other predictions); broken.yaml fails inside the notebook; typo.yaml does not validate."
    d = tmp_path_factory.mktemp('configs')
    (d/'a.yaml').write_text(f"base: {SMOKE}\nexperiment: sweep_a\n")
    (d/'b.yaml').write_text(f"base: {SMOKE}\nexperiment: sweep_b\ntraining: {{learning_rate: 5.0e-3}}\n")
    (d/'broken.yaml').write_text(f"base: {SMOKE}\nexperiment: broken\ndata: {{demo: null, train: no/such/train.csv, test: no/such/test.csv}}\n")
    (d/'typo.yaml').write_text(f"base: {SMOKE}\nexperiment: typo\ntraining: {{lerning_rate: 0.1}}\n")
    return d


@pytest.fixture(scope='session')
def swept(tmp_path_factory, sweep_configs):
    "One `dialsum sweep` of a, b, broken, typo into a new runs folder: (completed process, runs folder). Copy the folder to change it."
    runs = tmp_path_factory.mktemp('swept')/'runs'
    p = dialsum('sweep', *(sweep_configs/f'{n}.yaml' for n in ('a', 'b', 'broken', 'typo')), '--set', f'output.runs_dir={runs}')
    return p, runs


# Held-out real data (tests/test_real_data.py: Korean; tests/test_batching.py: DialogSum English): one tiny model per training
# order and data set, trained once.
HOLDOUT_SIDES = {'random': [], 'length_buckets': ['training.train_sampling_strategy=length_buckets'],
                 # 4,096 tokens at 10% padding: 16.0 rows a step on 400 Korean dev rows (at 3% only 5.7: too few of each length)
                 'tokens': ['training.batch_tokens=4096', 'training.batch_padding=0.1']}


def _holdout_runs(tmp, train, held):
    "side -> the run folder of a tiny model trained 100 steps on `train` in that order (`HOLDOUT_SIDES`), scored on `held`; "
    "each side is trained when first asked for."
    data = tmp/'data'; data.mkdir()
    train.to_csv(data/'train.csv', index=False)
    held.to_csv(data/'dev.csv', index=False)
    held[['fname', 'dialogue']].to_csv(data/'test.csv', index=False)
    done = {}
    def run(side):
        if side not in done:
            runs = tmp/side
            p = dialsum('run', 'configs/experiments/smoke.yaml', 'data.demo=null', f'data.train={data/"train.csv"}',
                        f'data.dev={data/"dev.csv"}', f'data.test={data/"test.csv"}', f'output.runs_dir={runs}',
                        'model.scratch.vocab_size=2000', 'model.max_source_length=256', 'training.max_steps=100',
                        'training.learning_rate=3e-3', 'training.eval_steps=100',
                        'training.per_device_train_batch_size=16', 'generation.max_new_tokens=32',
                        'generation.batch_size=64', *HOLDOUT_SIDES[side])
            assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-2000:]
            (done[side],) = run_folders(runs)
        return done[side]
    return run


@pytest.fixture(scope='session')
def real_holdout(tmp_path_factory):
    "side -> the run folder of a tiny model trained 100 steps on 400 rows of the real Korean dev.csv in that training order "
    "(`HOLDOUT_SIDES`), scored on the 99 rows held out."
    if not (SHARED_KO/'dev.csv').exists():
        pytest.skip(f'real data not present at {SHARED_KO} (it is on CI and developer machines only)')
    import pandas as pd
    dev = pd.read_csv(SHARED_KO/'dev.csv')
    return _holdout_runs(tmp_path_factory.mktemp('holdout'), dev.iloc[:400], dev.iloc[400:])


@pytest.fixture(scope='session')
def english_holdout(tmp_path_factory):
    "The same on DialogSum's English train.csv (one reference a row): 400 rows to train on, the next 100 held out."
    src = SHARED_KO.parent/'dialogsum_en'/'train.csv'
    if not src.exists():
        pytest.skip(f'real data not present at {src} (it is on CI and developer machines only)')
    import pandas as pd
    rows = pd.read_csv(src)[['fname', 'dialogue', 'summary']]
    return _holdout_runs(tmp_path_factory.mktemp('holdout_en'), rows.iloc[:400], rows.iloc[400:500])
