"Pictures: a smoke run's folder holds curves.png and scores.png, shown in its notebook; the runs chart; the EDA notebook on demo data."
import json
from pathlib import Path

import papermill as pm
from matplotlib.image import imread

from conftest import ROOT, dialsum, run_folders
from dialsum.data import make_demo_data
from dialsum.plots import plot_runs


def _pngs(nb_path:Path)->list:
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    return [o for c in nb['cells'] for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]


def test_smoke_run_has_pictures(tmp_path):
    r = dialsum('run', 'configs/experiments/smoke.yaml', f'output.runs_dir={tmp_path}')
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = run_folders(tmp_path)
    for name in ('curves.png', 'scores.png'):
        img = imread(run/name)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 800, (name, img.shape)
    assert len(_pngs(run/'run.ipynb')) == 2  # both shown in the executed notebook
    assert 'picture not drawn' not in (run/'run.ipynb').read_text(encoding='utf-8')
    out = plot_runs(tmp_path)
    assert out == tmp_path/'runs.png' and imread(out).ndim == 3


def test_eda_on_demo_data(tmp_path):
    data = make_demo_data(tmp_path/'demo', n_train=120, n_dev=30, n_test=30)['train'].parent
    out = tmp_path/'eda.ipynb'
    pm.execute_notebook(ROOT/'nbs'/'eda.ipynb', out, parameters={'data_dir': str(data)}, cwd=str(ROOT/'nbs'),
                        kernel_name='python3', progress_bar=False)
    text = out.read_text(encoding='utf-8')
    assert f"{data}: train 120 rows, dev 30 rows, test 30 rows" in text
    assert len(_pngs(out)) >= 5  # lengths, truncation, topics, speakers and turns, mask tags
