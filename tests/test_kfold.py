"`dialsum kfold`: three folds of the smoke config, the out-of-fold score, a promoted MBR ensemble; --resume."
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import SMOKE, dialsum, run_folders
from dialsum.submissions import read_index


def metadata(run): return json.loads((Path(run)/'metadata.json').read_text(encoding='utf-8'))


@pytest.mark.slow  # three smoke runs
def test_kfold_three_folds_then_resume(tmp_path):
    "3 folds by topic: 3 ordinary runs with their fold, the out-of-fold estimate, a promoted ensemble; --resume skips."
    runs = tmp_path/'runs'
    cfg = tmp_path/'kf.yaml'; cfg.write_text(f"base: {SMOKE}\nexperiment: kf\noutput: {{runs_dir: {runs}}}\n")
    p = dialsum('kfold', cfg, '--folds', '3', '--stratify', 'topic')
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    folds = sorted((r for r in run_folders(runs) if 'kfold' in metadata(r) and metadata(r).get('kind') != 'ensemble'),
                   key=lambda r: metadata(r)['kfold']['fold'])
    assert [metadata(r)['kfold']['fold'] for r in folds] == [1, 2, 3]
    assert all(metadata(r)['status'] == 'completed' for r in folds)
    (ens,) = [r for r in run_folders(runs) if metadata(r).get('kind') == 'ensemble']
    md = metadata(ens)
    assert (md['status'], md['promoted'], md['dev_source'], md['members']) == ('completed', True, 'out-of-fold',
                                                                               [r.name for r in folds])
    assert (runs/'latest_submission.csv').read_bytes() == (ens/'submission.csv').read_bytes()
    # the folds: disjoint dev rows covering the pool (train 48 + dev 8 rows), each run scored on its own fold
    (folder,) = (runs/'kfold').iterdir()
    devs = [pd.read_csv(folder/f'fold_{i}'/'dev.csv', dtype=str) for i in (1, 2, 3)]
    assert sum(map(len, devs)) == 56 and len(set().union(*(set(d.fname) for d in devs))) == 56
    for r, d in zip(folds, devs, strict=True):
        assert pd.read_csv(r/'predictions_dev.csv', dtype=str).fname.tolist() == d.fname.tolist()
        assert not set(d.fname) & set(pd.read_csv(folder/f"fold_{metadata(r)['kfold']['fold']}"/'train.csv').fname)
    oof = pd.read_csv(ens/'predictions_dev.csv', dtype=str, keep_default_na=False)
    assert sorted(oof.fname) == sorted(pd.concat(devs).fname)
    assert f"cross-validation (out-of-fold, 56 rows): dev score {md['dev']['score']:.2f}" in p.stdout
    ix = read_index(runs)
    assert set(ix.run_id) == {r.name for r in folds} | {ens.name} and set(ix.status) == {'completed'}

    p = dialsum('kfold', cfg, '--folds', '3', '--stratify', 'topic', '--resume')
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert p.stdout.count('already completed (--resume)') >= 3
    again = [r for r in run_folders(runs) if metadata(r).get('kind') != 'ensemble']
    assert sorted(again) == sorted(folds)  # no fold trained again


def test_kfold_bad_folds(tmp_path):
    "--folds 1 and an unknown pool are refused before anything runs, exit 2."
    p = dialsum('kfold', SMOKE, '--folds', '1', '--set', f'output.runs_dir={tmp_path/"runs"}')
    assert p.returncode == 2 and '--folds 1: give 2 to' in p.stderr, p.stderr
    assert not (tmp_path/'runs').exists() or not run_folders(tmp_path/'runs')
