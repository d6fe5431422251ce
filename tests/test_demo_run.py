"The demo experiment end to end through papermill: every artifact of a run folder, checked."
import json, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from conftest import BIN, ROOT, dialsum, run_folders


def check_run_folder(run: Path, n_dev: int, n_test: int, notebook: Path = None):
    "Assert that `run` holds a complete, consistent record of a completed run."
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'completed', md.get('error')
    cfg = yaml.safe_load((run/'config.yaml').read_text())
    assert cfg['experiment'] == md['experiment']
    metrics = json.loads((run/'metrics.json').read_text())
    for k in ('rouge1', 'rouge2', 'rougeL', 'score'):
        assert 0 <= metrics['dev'][k] <= 100
    lo, hi = metrics['dev']['score_ci95']
    assert lo <= metrics['dev']['score'] <= hi
    dev = pd.read_csv(run/'predictions_dev.csv', keep_default_na=False)
    assert len(dev) == n_dev and {'fname', 'prediction', 'reference', 'score'} <= set(dev.columns)
    assert abs(dev['score'].mean() - metrics['dev']['score']) < 1e-6
    sub = pd.read_csv(run/'submission.csv', keep_default_na=False)
    test = pd.read_csv(run/'data'/'test.csv') if (run/'data'/'test.csv').exists() else None
    assert list(sub.columns) == ['fname', 'summary'] and len(sub) == n_test
    if test is not None: assert sub['fname'].tolist() == test['fname'].tolist()
    assert (sub['summary'].str.strip() != '').all()
    nb = json.loads((notebook or run/'run.ipynb').read_text())
    assert nb['metadata']['papermill']['exception'] is None
    best = run/md['best_checkpoint']
    assert best.parent == run/'checkpoints' and (best/'model.safetensors').exists() and (best/'tokenizer.json').exists()
    state = json.loads((run/'checkpoints'/'trainer_state.json').read_text())
    assert Path(state['best_model_checkpoint']).name == best.name
    return md, metrics, dev, sub


def test_smoke_through_cli(tmp_path):
    "`dialsum run` puts the executed notebook and every artifact in one new run folder."
    p = dialsum('run', 'configs/experiments/smoke.yaml', f'output.runs_dir={tmp_path}')
    assert p.returncode == 0, p.stderr + p.stdout
    (run,) = run_folders(tmp_path)
    assert run.name.startswith('smoke_')
    md, metrics, dev, sub = check_run_folder(run, 8, 8)
    assert 'dev score' in p.stdout
    # the best checkpoint, reloaded from disk, gives exactly the recorded dev predictions
    from dialsum.config import load_config
    from dialsum.data import read_split
    from dialsum.inference import predict
    from dialsum.models import load_pretrained
    cfg = load_config(run/'config.yaml', root=ROOT)
    tok, model = load_pretrained(str(run/md['best_checkpoint']))
    again = predict(model, tok, read_split(run/'data'/'dev.csv', 'dev'), cfg, progress=False)
    assert again['summary'].tolist() == dev['prediction'].tolist()
    assert (run/'run.ipynb').exists() and (run/'run.log').stat().st_size > 0


def test_typo_fails_before_anything_is_made(tmp_path):
    "A misspelt key exits non-zero with the suggestion, and no run folder appears."
    p = dialsum('run', 'configs/experiments/smoke.yaml', f'output.runs_dir={tmp_path}', 'training.lerning_rate=1e-4')
    assert p.returncode == 2
    assert "did you mean 'training.learning_rate'" in p.stderr
    assert list(tmp_path.iterdir()) == []  # not even an index


def test_failing_run_is_recorded_as_failed(tmp_path):
    "A run that raises inside the notebook exits 1 and its record says failed, with the error."
    p = dialsum('run', 'configs/experiments/smoke.yaml', f'output.runs_dir={tmp_path}', 'data.demo=null', 'data.train=no/such.csv')
    assert p.returncode == 1
    (run,) = run_folders(tmp_path)
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'failed' and 'no/such.csv' in md['error']
    assert (run/'run.ipynb').exists() and not (run/'submission.csv').exists()


@pytest.mark.slow
def test_demo_learns(tmp_path):
    "The demo config, run with the plain papermill command, scores clearly above its untrained model."
    out = tmp_path/'x.ipynb'
    p = subprocess.run([str(BIN/'papermill'), 'nbs/run_experiment.ipynb', str(out), '-p', 'config', 'configs/experiments/demo.yaml',
                        '-p', 'run_dir', str(tmp_path/'run')], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    md, metrics, dev, sub = check_run_folder(tmp_path/'run', 60, 60, notebook=out)
    # the untrained model the run started from, scored the same way
    from dialsum.config import load_config
    from dialsum.data import read_split
    from dialsum.inference import predict, score_predictions
    from dialsum.models import load_pretrained
    cfg = load_config(tmp_path/'run'/'config.yaml', root=ROOT)
    tok, model = load_pretrained(str(tmp_path/'run'/'base_model'))
    dev_df = read_split(tmp_path/'run'/'data'/'dev.csv', 'dev')
    untrained, _ = score_predictions(dev_df, predict(model, tok, dev_df, cfg, progress=False))
    assert metrics['dev']['score'] > untrained['score'] + 20, (metrics['dev']['score'], untrained['score'])
    assert dev['prediction'].str.contains('#Person').mean() > 0.5  # speaker tags survive into predictions
