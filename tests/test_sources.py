"Issue 15: several training sources with weights, the leakage check, staged runs (run:...), and the features cache."
import hashlib, json
from pathlib import Path

import pandas as pd
import pytest

from casebook import record
from conftest import ROOT, SMOKE, dialsum, run_folders

SOURCES = """base: {smoke}
experiment: {name}
data:
  demo: null
  train:
    - {d}/a.csv
    - path: {d}/b.jsonl
      columns: {{fname: id, dialogue: text, summary: gist}}
      weight: 2.5
  dev: {d}/dev.csv
  test: {d}/test.csv
  sample_submission: {d}/sample_submission.csv
{extra}"""


def md_of(run): return json.loads((Path(run)/'metadata.json').read_text())


@pytest.fixture(scope='session')
def source_files(tmp_path_factory):
    "The smoke demo data as two sources: a.csv (32 rows) and b.jsonl (16 rows, its own column names); dev, test."
    from dialsum.data import make_demo_data
    d = tmp_path_factory.mktemp('sources')
    paths = make_demo_data(d, n_train=48, n_dev=8, n_test=8, seed=0)
    train = pd.read_csv(paths['train'], dtype=str, keep_default_na=False)
    train[:32].to_csv(d/'a.csv', index=False)
    b = train[32:].rename(columns={'fname': 'id', 'dialogue': 'text', 'summary': 'gist'})
    b.to_json(d/'b.jsonl', orient='records', lines=True, force_ascii=False)
    (d/'train.csv').unlink()
    return d


def config(d, name, source_files, extra=''):
    p = Path(d)/f'{name}.yaml'
    p.write_text(SOURCES.format(smoke=SMOKE, name=name, d=source_files, extra=extra), encoding='utf-8')
    return p


@pytest.fixture(scope='session')
def sources_sweep(tmp_path_factory, source_files):
    "`dialsum sweep` of two configs on the same two sources (other learning rates): (process, runs folder)."
    d = tmp_path_factory.mktemp('sources_cfg')
    runs = d/'runs'
    a = config(d, 'src_a', source_files)
    b = config(d, 'src_b', source_files, 'training: {learning_rate: 5.0e-3}\n')
    p = dialsum('sweep', a, b, '--set', f'output.runs_dir={runs}')
    return p, runs


@pytest.mark.slow
def test_two_weighted_sources_train_and_are_recorded(sources_sweep, source_files):
    p, runs = sources_sweep
    assert p.returncode == 0, p.stdout + p.stderr
    (a,) = [r for r in run_folders(runs) if r.name.startswith('src_a_')]
    md = md_of(a)
    assert md['status'] == 'completed' and md['promoted'], md.get('error')
    got = {s['source']: s for s in md['train_sources']}
    ja, jb = str(source_files/'a.csv'), str(source_files/'b.jsonl')
    assert (got[ja]['rows_read'], got[ja]['examples']) == (32, 32)
    assert (got[jb]['rows_read'], got[jb]['examples']) == (16, 40)  # weight 2.5: twice, and half of it once more
    assert got[ja]['share'] == round(32 / 72, 4) and got[jb]['share'] == round(40 / 72, 4)
    for f in (ja, jb): assert got[f]['sha256'] == hashlib.sha256(Path(f).read_bytes()).hexdigest()
    data = json.loads((a/'metrics.json').read_text())['data']['train']
    assert data['rows_kept'] == 72 and data['overlap']['rows'] == 0  # the trainer was given all 72 examples
    state = json.loads((a/'checkpoints'/'trainer_state.json').read_text())
    losses = [h['loss'] for h in state['log_history'] if 'loss' in h]
    assert losses[-1] < losses[0], losses  # it learned from them


@pytest.mark.slow
def test_second_run_of_a_sweep_reuses_the_features(sources_sweep):
    p, runs = sources_sweep
    assert p.returncode == 0, p.stdout + p.stderr
    (a,) = [r for r in run_folders(runs) if r.name.startswith('src_a_')]
    (b,) = [r for r in run_folders(runs) if r.name.startswith('src_b_')]
    fa, fb = md_of(a)['features_cache'], md_of(b)['features_cache']
    assert (fa['train']['cache'], fa['dev']['cache']) == ('miss', 'miss'), fa
    assert (fb['train']['cache'], fb['dev']['cache']) == ('hit', 'hit'), fb
    assert fa['train']['key'] == fb['train']['key'] and (runs/'.features'/fa['train']['key']).is_dir()
    assert 'features: train hit, dev hit' in (b/'run.log').read_text() or 'features: train hit' in p.stdout + p.stderr


@pytest.mark.slow
def test_staged_run_starts_from_the_parent_checkpoint(sources_sweep, tmp_path):
    "run:src_a starts from that experiment's best completed run; the record names it, `dialsum runs` shows the chain."
    from dialsum.config import load_config
    from dialsum.lora import load_checkpoint
    from dialsum.models import load_model
    from dialsum.train import start_folder
    p, runs = sources_sweep
    assert p.returncode == 0, p.stdout + p.stderr
    (parent,) = [r for r in run_folders(runs) if r.name.startswith('src_a_')]
    pmd = md_of(parent)
    cfg_path = tmp_path/'staged.yaml'
    cfg_path.write_text(f"base: {SMOKE}\nexperiment: staged\nmodel: {{scratch: null, name_or_path: 'run:src_a'}}\n"
                        "training: {max_steps: 4, eval_steps: 2}\n")
    q = dialsum('run', cfg_path, f'output.runs_dir={runs}')
    assert q.returncode == 0, q.stdout + q.stderr
    (staged,) = [r for r in run_folders(runs) if r.name.startswith('staged_')]
    md = md_of(staged)
    assert md['status'] == 'completed', md.get('error')
    assert md['parent']['run_id'] == parent.name and md['parent']['checkpoint'] == pmd['best_checkpoint'], md['parent']
    assert md['parent']['kind'] == 'full'
    assert Path(md['model_source']) == parent/pmd['best_checkpoint']
    best_tok = json.loads((staged/md['best_checkpoint']/'tokenizer.json').read_text())['model']['vocab']
    assert best_tok == json.loads((parent/pmd['best_checkpoint']/'tokenizer.json').read_text())['model']['vocab']
    # the starting weights are the parent's best checkpoint, tensor for tensor
    cfg = load_config(cfg_path, [f'output.runs_dir={runs}'], root=ROOT)
    folder, rec = start_folder(cfg, ROOT, tmp_path/'again')
    _, start, _ = load_model(cfg.model.model_copy(update={'name_or_path': str(folder)}), [], tmp_path, ROOT)
    _, best = load_checkpoint(parent/pmd['best_checkpoint'], load_config(parent/'config.yaml', root=ROOT))
    sd = best.state_dict()
    assert sd.keys() == start.state_dict().keys()
    assert all((v == sd[k]).all() for k, v in start.state_dict().items())
    table = dialsum('runs', '--runs-dir', runs)
    row = next(line for line in table.stdout.splitlines() if line.startswith(staged.name))
    assert parent.name in row.split(), table.stdout


def test_leaking_row_is_refused_with_its_fname(tmp_path, source_files):
    "A source row that is a dev dialogue (once cleaned): exit 1, fname and source named, run failed, nothing promoted."
    dev = pd.read_csv(source_files/'dev.csv', dtype=str, keep_default_na=False)
    leak = pd.DataFrame({'fname': ['ext_0', 'ext_1'], 'summary': ['다른 요약', '새는 요약'],
                         'dialogue': ['#Person1#: 전혀 다른 대화', '  ' + dev.dialogue[3] + '  ']})
    leak.to_csv(tmp_path/'leak.csv', index=False)
    cfg = config(tmp_path, 'leaky', source_files)
    runs = tmp_path/'runs'
    train = f"[{source_files/'a.csv'}, {tmp_path/'leak.csv'}]"
    p = dialsum('run', cfg, f'output.runs_dir={runs}', f'data.train={train}')
    assert p.returncode == 1, p.stdout + p.stderr
    assert 'LeakageError' in p.stderr and f"ext_1 ({tmp_path/'leak.csv'}) = dev {dev.fname[3]}" in p.stderr, p.stderr
    assert 'ext_0' not in p.stderr and 'data.allow_overlap: true' in p.stderr
    (run,) = run_folders(runs)
    md = md_of(run)
    assert md['status'] == 'failed' and 'ext_1' in md['error'] and not md.get('promoted')
    assert not (runs/'latest_submission.csv').exists() and not (run/'checkpoints').exists()
    record('source-leak', 'Training data', 'a training source row whose dialogue is a dev dialogue (with extra spaces)',
           'refused before training', 'exit 1, run recorded as failed, nothing promoted', md['error'], tmp_path,
           source_files)


def test_allow_overlap_reports_the_rows(tmp_path, source_files):
    from dialsum.config import DataConfig
    from dialsum.data import load_splits
    dev = pd.read_csv(source_files/'dev.csv', dtype=str, keep_default_na=False)
    leak = pd.DataFrame({'fname': ['ext_1'], 'dialogue': [dev.dialogue[0]], 'summary': ['요약']})
    leak.to_csv(tmp_path/'leak.csv', index=False)
    data = DataConfig(train=[str(source_files/'a.csv'), str(tmp_path/'leak.csv')], dev=str(source_files/'dev.csv'),
                      test=str(source_files/'test.csv'), allow_overlap=True)
    sp = load_splits(data, ROOT)
    ov = sp.report['train']['overlap']
    assert ov['rows'] == 1 and ov['first'][0]['fname'] == 'ext_1' and ov['allowed']
    assert any('ext_1' in n for n in sp.report['train']['notes'])
    assert len(sp.train) == 33


# ------------------------------------------------------------------ bad input for every new key

def test_missing_source_file_fails_before_training(tmp_path, source_files):
    cfg = config(tmp_path, 'gone', source_files)
    runs = tmp_path/'runs'
    p = dialsum('run', cfg, f'output.runs_dir={runs}', f"data.train=[{source_files/'a.csv'}, {tmp_path/'nope.jsonl'}]")
    assert p.returncode == 1, p.stdout + p.stderr
    assert f"data.train[1] ({tmp_path/'nope.jsonl'})" in p.stderr and 'training source not found' in p.stderr, p.stderr
    (run,) = run_folders(runs)
    assert md_of(run)['status'] == 'failed' and 'nope.jsonl' in md_of(run)['error']
    assert not (run/'checkpoints').exists()
    record('source-missing', 'Training data', 'data.train lists a JSONL file that does not exist',
           'refused before training', 'exit 1, run recorded as failed', md_of(run)['error'], tmp_path, source_files)


def test_mapped_column_missing_is_named(tmp_path, source_files):
    from dialsum.config import DataConfig
    from dialsum.data import DataError, load_sources
    cols = {'fname': 'id', 'dialogue': 'body', 'summary': 'gist'}
    data = DataConfig(train=[str(source_files/'a.csv'), {'path': str(source_files/'b.jsonl'), 'columns': cols}])
    with pytest.raises(DataError) as e: load_sources(data, ROOT)
    assert f"data.train[1] ({source_files/'b.jsonl'})" in str(e.value) and "missing column(s) 'body'" in str(e.value)
    assert "'text'" in str(e.value) and 'set data.train[1].columns.<name>' in str(e.value)  # its columns, the key
    record('source-column', 'Training data', "a source's columns map dialogue to a column the file lacks", 'refused',
           'DataError naming the source and the columns found', str(e.value), source_files)


def test_weight_not_positive_is_refused(tmp_path, source_files):
    "weight 0 through the command line (exit 2, no run folder); a negative weight and a missing path by the schema."
    from dialsum.config import ConfigError, DataConfig
    cfg = tmp_path/'w.yaml'
    cfg.write_text(SOURCES.format(smoke=SMOKE, name='w', d=source_files, extra='').replace('weight: 2.5', 'weight: 0'))
    p = dialsum('run', cfg, f'output.runs_dir={tmp_path/"runs"}')
    assert p.returncode == 2 and 'data.train[1].weight: Input should be greater than 0' in p.stderr, p.stderr
    assert not (tmp_path/'runs').exists() or not run_folders(tmp_path/'runs')
    record('source-weight', 'Training data', 'a source with weight: 0', 'refused at validation',
           'exit 2, no run folder', p.stderr, tmp_path, source_files)
    with pytest.raises(ValueError, match=r'data.train\[0\].weight: Input should be greater than 0'):
        DataConfig(train=[{'path': 'a.csv', 'weight': -1}])
    with pytest.raises(ValueError, match='give exactly one of path'): DataConfig(train=[{'weight': 2}])
    assert issubclass(ConfigError, Exception)


def test_run_naming_no_run_fails_before_training(tmp_path):
    runs = tmp_path/'runs'
    p = dialsum('run', SMOKE, f'output.runs_dir={runs}', 'model.scratch=null',
                'model.name_or_path=run:no_such_experiment')
    assert p.returncode == 1, p.stdout + p.stderr
    assert "no completed run of an experiment 'no_such_experiment'" in p.stderr, p.stderr
    (run,) = run_folders(runs)
    assert md_of(run)['status'] == 'failed' and not (run/'checkpoints').exists()
    record('staged-no-run', 'Training data', 'model.name_or_path: run:NAME naming no run and no experiment',
           'refused before training', 'exit 1, run recorded as failed', md_of(run)['error'], tmp_path)


def test_run_without_checkpoint_is_refused(tmp_path):
    from dialsum.files import write_json
    from dialsum.runs import CheckpointError
    from dialsum.train import parent_run
    runs = tmp_path/'runs'; d = runs/'broken_20260101-000000'; d.mkdir(parents=True)
    write_json(d/'metadata.json', dict(run_id=d.name, experiment='broken', status='failed'))
    with pytest.raises(CheckpointError) as e: parent_run(f'run:{d.name}', runs)
    assert 'has no checkpoint to start from' in str(e.value) and d.name in str(e.value)
    record('staged-no-checkpoint', 'Training data', 'model.name_or_path: run:RUN_ID naming a run without checkpoints',
           'refused', 'CheckpointError naming the run', str(e.value), tmp_path)
    with pytest.raises(CheckpointError) as e: parent_run('run:../elsewhere', runs)
    assert 'not a path' in str(e.value)


CONCURRENT = """
import json, sys, time
from pathlib import Path
from dialsum.config import Config
from dialsum.data import demo_rows
from dialsum.features import cached_features
from dialsum.models import train_tokenizer
df = demo_rows('train', 48)
tok = train_tokenizer(list(df.dialogue) + list(df.summary), 500)
cfg = Config(experiment='x', model={'name_or_path': 'x', 'max_source_length': 128, 'max_target_length': 32})
Path(sys.argv[2]).touch()
while not Path(sys.argv[3]).exists(): time.sleep(0.005)
feats, what = cached_features(tok, df, cfg, Path(sys.argv[1]))
print(json.dumps(dict(what=what, feats=feats)))
"""


def test_concurrent_runs_share_one_cache_entry(tmp_path):
    "Two processes make the same split's features at once: one makes and keeps them, the other waits and reads them."
    import subprocess, sys, time
    cache, go = tmp_path/'.features', tmp_path/'go'
    procs = [subprocess.Popen([sys.executable, '-c', CONCURRENT, str(cache), str(tmp_path/f'ready-{t}'), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT) for t in 'ab']
    deadline = time.time() + 300
    while not all((tmp_path/f'ready-{t}').exists() for t in 'ab'):
        assert time.time() < deadline and all(p.poll() is None for p in procs); time.sleep(0.01)
    go.touch()
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(o['what']['cache'] for o in outs) == ['hit', 'miss']
    assert outs[0]['feats'] == outs[1]['feats'] and outs[0]['what']['key'] == outs[1]['what']['key']
    kept = [p.name for p in cache.iterdir() if not p.name.endswith('.lock')]
    assert kept == [outs[0]['what']['key']]  # no temporary left
