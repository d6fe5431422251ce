"""Pictures: a smoke run's folder holds curves.png and scores.png with their panels, shown in its notebook; the runs chart;
the EDA notebook on demo data, on a config's data and tokenizer, and refusing a configured file that is missing."""
import json, re
from pathlib import Path

import papermill as pm
import pytest
from matplotlib.image import imread

import dialsum.plots as plots
from conftest import ROOT, dialsum, run_folders
from dialsum.data import make_demo_data
from dialsum.plots import plot_curves, plot_runs, plot_scores

PNG = b'\x89PNG\r\n\x1a\n'


def _pngs(nb_path:Path)->list:
    nb = json.loads(Path(nb_path).read_text(encoding='utf-8'))
    return [o for c in nb['cells'] for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]


def _panels(monkeypatch, plot, *args)->tuple:
    "Call `plot(*args)`, keeping the figure it draws: (the path it returned, [(title, x label, y label, legend texts) per panel])."
    figs, save = [], plots.save_figure
    monkeypatch.setattr(plots, 'save_figure', lambda draw, path, size=(11, 4): save(lambda fig: (draw(fig), figs.append(fig)), path, size))
    out = plot(*args)
    [fig] = figs
    return out, [(a.get_title(), a.get_xlabel(), a.get_ylabel(), [t.get_text() for t in (a.get_legend().get_texts() if a.get_legend() else [])])
                 for a in fig.axes]


def test_smoke_run_has_pictures(tmp_path, monkeypatch):
    r = dialsum('run', 'configs/experiments/smoke.yaml', f'output.runs_dir={tmp_path}')
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = run_folders(tmp_path)
    for name in ('curves.png', 'scores.png'):
        assert (run/name).read_bytes()[:8] == PNG, f'{name} is not a PNG file'
        img = imread(run/name)
        assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 800, (name, img.shape)
    shown = _pngs(run/'run.ipynb')
    assert len(shown) == 2  # both shown in the executed notebook
    assert 'picture not drawn' not in (run/'run.ipynb').read_text(encoding='utf-8')
    # the panels the pictures are for, drawn again from the run folder: training and dev loss, dev score; topics, length
    out, [loss, score] = _panels(monkeypatch, plot_curves, run)
    assert out == run/'curves.png' and out.read_bytes()[:8] == PNG
    assert (loss[0], loss[2]) == ('loss', 'loss') and {'training loss', 'dev loss'} <= set(loss[3]), loss
    assert (score[0], score[2]) == ('dev score per evaluation', 'competition score') and 'dev score' in score[3], score
    assert any(t.startswith('best ') for t in score[3]), score  # the best checkpoint is marked
    out, [topics, length] = _panels(monkeypatch, plot_scores, run)
    assert out == run/'scores.png' and out.read_bytes()[:8] == PNG
    assert re.fullmatch(r'mean score, \d+ most frequent of \d+ topics \(rows\)', topics[0]) and topics[1] == 'competition score', topics
    assert length[0].startswith('score vs length') and length[1:3] == ('dialogue length (characters)', 'competition score'), length
    out, [runs] = _panels(monkeypatch, plot_runs, tmp_path)
    assert out == tmp_path/'runs.png' and out.read_bytes()[:8] == PNG and imread(out).ndim == 3
    assert runs[0] == '1 best of 1 completed runs (1 in the index)' and runs[1].startswith('dev competition score'), runs


def test_eda_on_demo_data(tmp_path):
    data = make_demo_data(tmp_path/'demo', n_train=120, n_dev=30, n_test=30)['train'].parent
    out = tmp_path/'eda.ipynb'
    pm.execute_notebook(ROOT/'nbs'/'eda.ipynb', out, parameters={'data_dir': str(data)}, cwd=str(ROOT/'nbs'),
                        kernel_name='python3', progress_bar=False)
    text = out.read_text(encoding='utf-8')
    assert f"{data}: train 120 rows, dev 30 rows, test 30 rows" in text
    assert len(_pngs(out)) >= 5  # lengths, truncation, topics, speakers and turns, mask tags


def test_eda_with_a_config(tmp_path):
    "With a config: its data (here its generated demo data) and the tokenizer a run trains for its scratch model, at its limits."
    from dialsum.config import load_config, project_root
    from dialsum.data import load_splits, model_inputs
    from dialsum.models import train_tokenizer
    config = 'configs/experiments/smoke.yaml'
    cfg = load_config(config, root=project_root(ROOT))
    splits = load_splits(cfg.data, ROOT, tmp_path/'mine')
    tok = train_tokenizer(model_inputs(splits.train) + list(splits.train.summary), cfg.model.scratch.vocab_size, cfg.model.scratch.arch)
    out = tmp_path/'eda.ipynb'
    pm.execute_notebook(ROOT/'nbs'/'eda.ipynb', out, parameters={'config': config}, cwd=str(ROOT/'nbs'), kernel_name='python3',
                        progress_bar=False)
    text = out.read_text(encoding='utf-8')
    n = {s: len(getattr(splits, s)) for s in ('train', 'dev', 'test')}
    assert f"{config} (generated demo data): train {n['train']} rows, dev {n['dev']} rows, test {n['test']} rows" in text
    assert f"the scratch bart tokenizer a run trains (vocab_size {cfg.model.scratch.vocab_size}, on {n['train']} train rows): " \
           f"{type(tok).__name__} with {len(tok)} tokens" in text
    assert f"limits: source {sorted({512, 1024, cfg.model.max_source_length})}, target {cfg.model.max_target_length}" in text
    assert len(_pngs(out)) >= 5


def test_eda_says_when_configured_data_is_missing(tmp_path):
    "A config whose data file is not there stops the notebook with the file's name; it never falls back to the demo data."
    missing = tmp_path/'no'/'train.csv'
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(ROOT/'nbs'/'eda.ipynb', tmp_path/'eda.ipynb', cwd=str(ROOT/'nbs'), kernel_name='python3', progress_bar=False,
                            parameters={'config': 'configs/experiments/kobart.yaml', 'overrides': [f'data.train={missing}']})
    assert e.value.ename == 'DataError' and f'{missing}: train file not found' in e.value.evalue, e.value.evalue
