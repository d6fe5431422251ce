"`dialsum ensemble` and `dialsum average` on three smoke runs of other seeds: promoted runs; bad inputs refused."
import json, shutil
from pathlib import Path

import pandas as pd
import pytest
from safetensors.torch import load_file

from casebook import record
from conftest import SMOKE, dialsum, run_folders
from dialsum.submissions import read_index


def metadata(run): return json.loads((Path(run)/'metadata.json').read_text(encoding='utf-8'))


def csv(p): return pd.read_csv(p, dtype=str, keep_default_na=False)


@pytest.fixture(scope='session')
def seeds(tmp_path_factory):
    "Three smoke runs (seeds 1, 2, 3; 12 steps, checkpoints at 4, 8, 12) in one runs folder, and their folders."
    d = tmp_path_factory.mktemp('seeds')
    runs, cfgs = d/'runs', []
    for s in (1, 2, 3):
        cfgs.append(d/f'seed{s}.yaml')
        cfgs[-1].write_text(f"base: {SMOKE}\nexperiment: seed{s}\n"
                            f"training: {{seed: {s}, max_steps: 12, learning_rate: 5.0e-3}}\n")
    p = dialsum('sweep', *cfgs, '--set', f'output.runs_dir={runs}')
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    by = {metadata(r)['experiment']: r for r in run_folders(runs)}
    return runs, [by[f'seed{s}'] for s in (1, 2, 3)]


def copy_runs(seeds, tmp_path):
    runs, members = seeds
    dest = tmp_path/'runs'; shutil.copytree(runs, dest)
    return dest, [dest/m.name for m in members]


@pytest.mark.slow  # three smoke runs, shared by the tests of this file
def test_ensemble_of_three_seeds(seeds, tmp_path):
    "mbr: a completed, promoted run whose dev score is reported against each member; runs and compare read it."
    runs, members = copy_runs(seeds, tmp_path)
    p = dialsum('ensemble', *(m.name for m in members), '--runs-dir', runs, '--name', 'seeds')
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (ens,) = [r for r in run_folders(runs) if r.name.startswith('seeds_')]
    md = metadata(ens)
    assert (md['status'], md['promoted'], md['method'], md['kind']) == ('completed', True, 'mbr', 'ensemble')
    assert md['members'] == [m.name for m in members]
    for m in members: assert m.name in p.stdout  # the table: one row per member
    assert sum(v in p.stdout for v in ('within noise', 'better', 'worse')) >= 1 and f'-> {ens}' in p.stdout
    # each member's paired comparison is the ensemble's dev score minus the member's, on the same dev rows
    dev = csv(ens/'predictions_dev.csv')
    ens_score = pd.to_numeric(dev.score).mean()
    lo, hi = md['dev']['score_ci95']
    assert abs(ens_score - md['dev']['score']) < 1e-6 and lo <= ens_score <= hi
    for c, m in zip(md['comparison'], members, strict=True):
        mem = csv(m/'predictions_dev.csv')
        assert c['run_id'] == m.name and c['vs_rows'] == len(mem)
        assert abs(c['vs_diff'] - (ens_score - pd.to_numeric(mem.score).mean())) < 1e-6
        assert c['vs_lo'] <= c['vs_diff'] <= c['vs_hi']
    # every chosen summary is one a member wrote for that row, and the member named wrote it
    preds = {m.name: dict(zip(csv(m/'predictions_dev.csv').fname, csv(m/'predictions_dev.csv').prediction, strict=True))
             for m in members}
    assert all(preds[r.member][r.fname] == r.prediction for r in dev.itertuples())
    subs = {m.name: dict(zip(csv(m/'submission.csv').fname, csv(m/'submission.csv').summary, strict=True))
            for m in members}
    sub, test = csv(ens/'submission.csv'), csv(members[0]/'data'/'test.csv')
    assert sub.fname.tolist() == test.fname.tolist()
    assert all(any(subs[m][f] == s for m in subs) for f, s in zip(sub.fname, sub.summary, strict=True))
    assert (runs/'latest_submission.csv').read_bytes() == (ens/'submission.csv').read_bytes()
    assert (runs/'history'/f'{ens.name}.csv').is_file()
    row = read_index(runs).set_index('run_id').loc[ens.name]
    assert (row.status, row.model) == ('completed', 'ensemble:mbr') and abs(row.dev_score - md['dev']['score']) < 1e-3

    p = dialsum('runs', '--runs-dir', runs)
    assert p.returncode == 0 and ens.name in p.stdout
    p = dialsum('compare', members[0], ens, '--runs-dir', runs)
    assert p.returncode == 0 and f"B  {ens.name}" in p.stdout, p.stderr[-2000:]

    p = dialsum('ensemble', *members, '--runs-dir', runs, '--method', 'best-dev')
    assert p.returncode == 0, p.stderr[-2000:]
    (bd,) = [r for r in run_folders(runs) if r.name.startswith('ensemble_best_dev_')]
    best = max(members, key=lambda m: pd.to_numeric(csv(m/'predictions_dev.csv').score).mean())
    assert (bd/'submission.csv').read_bytes() == (best/'submission.csv').read_bytes()
    p = dialsum('ensemble', *members, '--runs-dir', runs, '--method', 'vote')
    assert p.returncode == 0
    assert metadata(next(r for r in run_folders(runs) if r.name.startswith('ensemble_vote_')))['promoted']


@pytest.mark.slow  # the three smoke runs of this file's fixture
@pytest.mark.parametrize('case', ['one run', 'failed run', 'other test file', 'other dev rows', 'no predictions'])
def test_ensemble_refuses(seeds, tmp_path, case):
    "Runs that cannot be combined: exit 2, the run named, no run folder written, nothing promoted."
    runs, members = copy_runs(seeds, tmp_path)
    bad = runs/'bad_20260101-000000'; shutil.copytree(members[1], bad)
    md = {**metadata(bad), 'run_id': bad.name}
    (bad/'metadata.json').write_text(json.dumps(md))
    args, expect = [members[0], bad], bad.name
    if case == 'one run': args, expect = [members[0]], 'at least 2 runs'
    elif case == 'failed run': (bad/'metadata.json').write_text(json.dumps({**md, 'status': 'failed'}))
    elif case == 'other test file':
        t = csv(bad/'data'/'test.csv'); t.loc[0, 'dialogue'] = '#Person1#: 다른 대화입니다.'
        t.to_csv(bad/'data'/'test.csv', index=False)
    elif case == 'other dev rows':
        csv(members[1]/'predictions_dev.csv').iloc[1:].to_csv(bad/'predictions_dev.csv', index=False)
    else: (bad/'predictions_dev.csv').unlink()
    before, latest = set(run_folders(runs)), (runs/'latest_submission.csv').read_bytes()
    p = dialsum('ensemble', *args, '--runs-dir', runs)
    assert p.returncode == 2 and p.stderr.startswith('error: ') and expect in p.stderr, p.stderr[-2000:]
    assert set(run_folders(runs)) == before and (runs/'latest_submission.csv').read_bytes() == latest
    record(f"ensemble-{case.replace(' ', '-')}", 'Records', f'dialsum ensemble of {case}',
           'refused, exit 2, nothing written', 'refused', p.stderr, runs)


@pytest.mark.slow  # the three smoke runs of this file's fixture
def test_average_checkpoints(seeds, tmp_path):
    "average: the mean of the last 2 checkpoints, a loadable checkpoint of a new promoted run, usable by predict."
    runs, members = copy_runs(seeds, tmp_path)
    src = members[0]
    p = dialsum('average', src, '--last', '2', '--runs-dir', runs)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (avg,) = [r for r in run_folders(runs) if r.name.startswith('seed1_avg_')]
    md = metadata(avg)
    assert (md['status'], md['promoted'], md['kind']) == ('completed', True, 'averaged')
    assert md['averaged_from'] == [f'{src.name}/checkpoints/checkpoint-{s}' for s in (8, 12)]
    ck = avg/'checkpoints'/'checkpoint-12'
    assert {'model.safetensors', 'config.json', 'tokenizer.json'} <= {f.name for f in ck.iterdir()}
    assert not (ck/'optimizer.pt').exists()
    srcs = [src/'checkpoints'/f'checkpoint-{s}' for s in (8, 12)]
    w, a, b = (load_file(str(c/'model.safetensors')) for c in (ck, *srcs))
    assert w.keys() == a.keys() and all(((a[k] + b[k]) / 2 - w[k]).abs().max() < 1e-6 for k in w)
    assert any((a[k] - b[k]).abs().max() > 0 for k in w)  # the two checkpoints differ: the average is neither
    assert (runs/'latest_submission.csv').read_bytes() == (avg/'submission.csv').read_bytes()
    p = dialsum('predict', '--run', avg, '--output', tmp_path/'avg.csv')
    assert p.returncode == 0 and f'checkpoint {ck}' in p.stdout, p.stderr[-2000:]
    assert (tmp_path/'avg.csv').read_bytes() == (avg/'submission.csv').read_bytes()
    p = dialsum('ensemble', avg, members[1], members[2], '--runs-dir', runs)
    assert p.returncode == 0, p.stderr[-2000:]

    before = set(run_folders(runs))
    p = dialsum('average', src, '--checkpoints', 'checkpoint-12', '--runs-dir', runs)
    assert p.returncode == 2 and 'averaging needs at least 2' in p.stderr and set(run_folders(runs)) == before
    record('average-one-checkpoint', 'Records', 'dialsum average with one checkpoint',
           'refused, exit 2, nothing written', 'refused', p.stderr, runs)
