"A smoke run and the EDA notebook on the real Korean competition data (../shared/data/ko), skipped with a reason when it is absent."
import json

import pandas as pd
import pytest

from conftest import dialsum, run_folders
from test_demo_run import check_run_folder


@pytest.mark.slow
def test_real_data_smoke(real_ko, tmp_path):
    "Train briefly on part of dev.csv, score the rest, and submit all 499 rows of test.csv in its order."
    dev = pd.read_csv(real_ko/'dev.csv')
    data = tmp_path/'data'; data.mkdir()
    dev.iloc[:400].to_csv(data/'train.csv', index=False)
    dev.iloc[400:].to_csv(data/'dev.csv', index=False)
    runs = tmp_path/'runs'
    p = dialsum('run', 'configs/experiments/smoke.yaml', 'data.demo=null', f'data.train={data/"train.csv"}',
                f'data.dev={data/"dev.csv"}', f'data.test={real_ko/"test.csv"}', f'output.runs_dir={runs}',
                'model.scratch.vocab_size=2000', 'model.max_source_length=256', 'training.max_steps=60', 'training.learning_rate=5e-3',
                'training.eval_steps=30', 'training.per_device_train_batch_size=16', 'generation.max_new_tokens=24',
                'generation.batch_size=64')
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-2000:]
    (run,) = run_folders(runs)
    md, metrics, dev_pred, sub = check_run_folder(run, len(dev) - 400, 499)
    test = pd.read_csv(real_ko/'test.csv')
    assert sub['fname'].tolist() == test['fname'].tolist()
    assert metrics['data']['train']['rows_kept'] == 400


def test_eda_on_real_data(real_ko, tmp_path):
    "nbs/eda.ipynb with papermill on the real data: every split there counted, each picture drawn, no demo data."
    import papermill as pm
    from conftest import ROOT
    out = tmp_path/'eda.ipynb'
    pm.execute_notebook(ROOT/'nbs'/'eda.ipynb', out, parameters={'data_dir': str(real_ko)}, cwd=str(ROOT/'nbs'),
                        kernel_name='python3', progress_bar=False)
    nb = json.loads(out.read_text(encoding='utf-8'))
    text = '\n'.join(''.join(o.get('text', '')) for c in nb['cells'] for o in c.get('outputs', []))
    rows = {s: len(pd.read_csv(real_ko/f'{s}.csv')) for s in ('train', 'dev', 'test') if (real_ko/f'{s}.csv').exists()}
    assert f"{real_ko}: " + ', '.join(f"{s} {n} rows" for s, n in rows.items()) in text, text[:2000]
    assert 'demo' not in text
    pngs = [o for c in nb['cells'] for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
    assert len(pngs) >= 5  # lengths, truncation, topics, speakers and turns, mask tags
    assert 'no topic column' not in text  # the real dev split has topics


@pytest.fixture
def real_orders(real_holdout):
    "A tiny model trained on 400 rows of the real dev.csv, in length-bucket order and in random order (the default), "
    "both scored on the 99 rows held out: {strategy: run folder}."
    return {side: real_holdout(side) for side in ('length_buckets', 'random')}


@pytest.mark.slow
def test_length_buckets_not_worse_on_real_data(real_orders):
    "On held-out real dialogues, length buckets (opt-in, less padding) score no worse than random order at the same steps (paired bootstrap)."
    from dialsum.metrics import bootstrap_ci
    s = {k: pd.read_csv(r/'predictions_dev.csv', keep_default_na=False).set_index('fname')['score'] for k, r in real_orders.items()}
    steps = {k: json.loads((r/'metrics.json').read_text())['train']['global_step'] for k, r in real_orders.items()}
    assert steps['length_buckets'] == steps['random'] == 100
    diff = (s['length_buckets'] - s['random'].reindex(s['length_buckets'].index)).values
    lo, hi = bootstrap_ci(diff)
    # a stated tolerance: at most 1 point worse (the paired 95% interval's upper end above -1). Measured (2026-12-01): buckets 26.49,
    # random 26.77, interval -0.48..-0.07; but both tiny models wrote one sentence for every row after 100 steps (best constant
    # summary 28.73), so this bounds the harm of the order at this scale only; their records say so:
    assert hi > -1.0, (s['length_buckets'].mean(), s['random'].mean(), lo, hi)
    d = json.loads((real_orders['length_buckets']/'metrics.json').read_text())['diagnostics']
    assert d['rows'] == 99 and d['constant_baseline'] > 0 and 'encoder' in d  # every run records its diagnostics
    for r in real_orders.values():
        md, d = (json.loads((r/f).read_text()) for f in ('metadata.json', 'metrics.json'))
        if md['dev']['score'] < d['diagnostics']['constant_baseline']:  # no better than one sentence for all: flagged
            assert 'constant' in md['warn'].split(','), md['warn']
        if d['diagnostics']['distinct_predictions'] == 1: assert 'collapsed' in md['warn'].split(','), md['warn']
