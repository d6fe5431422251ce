"`dialsum sweep`: configs run one at a time, every outcome recorded, --resume, a killed sweep, a lost submission recovered."
import json, os, shutil, signal, subprocess, time
from pathlib import Path

import pandas as pd
import psutil
import pytest

from casebook import record
from conftest import BIN, ROOT, SMOKE, dialsum, run_folders
from dialsum.submissions import INDEX_COLUMNS, read_index, submission_problems


def metadata(run): return json.loads((Path(run)/'metadata.json').read_text(encoding='utf-8'))


def runs_of(runs, experiment): return [r for r in run_folders(runs) if metadata(r)['experiment'] == experiment]


def summary(stdout):
    "The sweep's summary table (the last in its output) as {config file name: {column: text}}."
    lines = stdout.splitlines()
    start = max(i for i, l in enumerate(lines) if l.split()[:3] == ['config', 'experiment', 'run_id'])
    head = lines[start]
    cols = head.split()
    at = [head.index(c) for c in cols] + [None]
    rows = {}
    for l in lines[start + 1:]:
        if not l.strip(): break
        r = {c: l[at[i]:at[i + 1]].strip() for i, c in enumerate(cols)}
        rows[r['config'].removesuffix('.yaml')] = r
    return rows


def copy_runs(runs, tmp_path):
    dest = tmp_path/'runs'; shutil.copytree(runs, dest); return dest


@pytest.mark.slow  # shares one 4-config sweep (about a minute) with test_cli.py
def test_sweep_records_every_outcome(swept):
    "Two configs complete, one fails inside its notebook, one does not validate: all recorded (each with a run folder and an index row), the sweep goes on, exit 1."
    p, runs = swept
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    s = summary(p.stdout)
    assert [(c, r['experiment'], r['status'], r['promoted']) for c, r in s.items()] == [
        ('a', 'sweep_a', 'completed', 'yes'), ('b', 'sweep_b', 'completed', 'yes'), ('broken', 'broken', 'failed', '-'),
        ('typo', 'typo', 'failed', '-')]
    assert "did you mean 'training.learning_rate'" in s['typo']['note']
    assert 'no GPU (NVML unavailable): running on CPU' in p.stdout.splitlines()[0]

    ix = read_index(runs)
    assert ix.columns.tolist() == INDEX_COLUMNS
    assert sorted(zip(ix.experiment, ix.status)) == [('broken', 'failed'), ('sweep_a', 'completed'), ('sweep_b', 'completed'), ('typo', 'failed')]
    (typo,) = runs_of(runs, 'typo')  # failed before its notebook: a run folder and an index row all the same
    assert s['typo']['run_id'] == typo.name and ix.set_index('run_id').error[typo.name].startswith('ConfigError: ')
    md = metadata(typo)
    assert (md['status'], Path(md['config']).name, md['stage']) == ('failed', 'typo.yaml', 'before the run started')
    assert "did you mean 'training.learning_rate'" in md['error'] and not (typo/'run.ipynb').exists()
    broken = ix.set_index('experiment').loc['broken']
    assert 'no/such/train.csv' in broken.error and broken.config_hash
    (bad,) = runs_of(runs, 'broken')
    md = metadata(bad)
    assert md['error'].startswith('PreflightError') and md['stage'] == 'preflight' and 'no/such/train.csv' in md['error']  # before training
    assert md['log'] == 'run.log' and (bad/'run.log').stat().st_size > 0
    nb = json.loads((bad/'run.ipynb').read_text())
    assert nb['metadata']['papermill']['exception'] is True and 'no/such/train.csv' in json.dumps(nb['cells'])

    history = sorted((runs/'history').iterdir())
    assert [h.name.rsplit('_', 1)[0] for h in history] == ['sweep_a', 'sweep_b']
    for c, exp, h in zip('ab', ['sweep_a', 'sweep_b'], history):
        (run,) = runs_of(runs, exp)
        test_fnames = pd.read_csv(run/'data'/'test.csv', dtype=str)['fname'].tolist()
        assert submission_problems(run/'submission.csv', test_fnames, run/'data'/'sample_submission.csv') == []
        assert h.read_bytes() == (run/'submission.csv').read_bytes()
        assert metadata(run)['promoted'] is True and float(s[c]['dev_score']) == pytest.approx(metadata(run)['dev']['score'], abs=0.006)
    assert (runs/'latest_submission.csv').read_bytes() == history[1].read_bytes()  # the last one promoted


@pytest.mark.slow  # shares one 4-config sweep (about a minute) with test_cli.py
def test_resume_runs_nothing_completed(swept, sweep_configs, tmp_path):
    "--resume skips the two completed configs (no new folder, same index rows) and runs the failed one again."
    runs = copy_runs(swept[1], tmp_path)
    before = {r.name for r in run_folders(runs)}
    p = dialsum('sweep', *(sweep_configs/f'{n}.yaml' for n in ('a', 'b', 'broken')), '--resume', '--set', f'output.runs_dir={runs}')
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    s = summary(p.stdout)
    assert [(c, r['status']) for c, r in s.items()] == [('a', 'skipped'), ('b', 'skipped'), ('broken', 'failed')]
    new = {r.name for r in run_folders(runs)} - before
    assert [metadata(runs/n)['experiment'] for n in new] == ['broken']
    assert s['a']['run_id'] in before and s['b']['run_id'] in before
    ix = read_index(runs)
    assert sorted(ix.status) == ['completed', 'completed', 'failed', 'failed', 'failed']  # a, b, typo, broken twice


@pytest.mark.slow  # shares one 4-config sweep (about a minute) with test_cli.py
def test_lost_submission_is_recovered(swept, sweep_configs, tmp_path):
    "A trained run whose submission.csv was deleted: --resume writes it again from the best checkpoint, promotes it, notes it."
    runs = copy_runs(swept[1], tmp_path)
    (run,) = runs_of(runs, 'sweep_a')
    original = (run/'submission.csv').read_bytes()
    (run/'submission.csv').unlink()
    p = dialsum('sweep', sweep_configs/'a.yaml', '--resume', '--set', f'output.runs_dir={runs}')
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert summary(p.stdout)['a']['status'] == 'recovered' and 'recovering it with dialsum predict' in p.stdout
    assert (run/'submission.csv').read_bytes() == original  # the same checkpoint, the same inference code
    md = metadata(run)
    assert md['status'] == 'completed' and md['promoted'] is True and md['recovered']['checkpoint'] == md['best_checkpoint']
    assert {h.name for h in (runs/'history').iterdir() if h.name.startswith('sweep_a')} == {f'{run.name}.csv', f'{run.name}-2.csv'}
    assert read_index(runs).set_index('run_id').error[run.name].startswith('submission recovered by dialsum predict')
    assert len(run_folders(runs)) == 4  # a, b, broken, typo: nothing was trained again


def start_sweep(runs, *configs):
    return subprocess.Popen([str(BIN/'dialsum'), 'sweep', *map(str, configs), '--set', f'output.runs_dir={runs}'], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for_kernel(p, runs, experiment, timeout=300):
    "Wait until the run of `experiment` is inside its notebook (the template's start_run has recorded an attempt); return its folder."
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert p.poll() is None, p.communicate()[0][-3000:]
        for d in Path(runs).glob(f'{experiment}_*'):
            try: md = metadata(d)
            except (OSError, ValueError): continue
            if md.get('status') == 'running' and md.get('attempts'): return d
        time.sleep(0.2)
    raise AssertionError(f'{experiment} did not start within {timeout} s')


@pytest.mark.slow
def test_kill_9_mid_run(sweep_configs, tmp_path):
    "kill -9 of a sweep and its kernel while its second run is under way (before it trained): the index parses, history is "
    "intact, the run reads as interrupted, --resume runs it again to completion."
    runs = tmp_path/'runs'
    p = start_sweep(runs, sweep_configs/'a.yaml', sweep_configs/'b.yaml')
    b = wait_for_kernel(p, runs, 'sweep_b')
    kernel = metadata(b)['process']['pid']  # recorded by the template's start_run, in the kernel
    os.killpg(p.pid, signal.SIGKILL)  # the sweep's process group ...
    try: os.kill(kernel, signal.SIGKILL)  # ... and its kernel (its own session): the whole run dies at once, as on a lost node
    except ProcessLookupError: pass
    p.wait(60)
    deadline = time.time() + 30
    while psutil.pid_exists(kernel) and time.time() < deadline: time.sleep(0.1)
    assert not metadata(b).get('train'), 'the kill came after training: the test must kill a run that has not trained yet'
    ix = read_index(runs)
    assert ix.columns.tolist() == INDEX_COLUMNS
    assert dict(zip(ix.experiment, ix.status)) == {'sweep_a': 'completed', 'sweep_b': 'running'}
    (a,) = runs_of(runs, 'sweep_a')
    assert [h.name for h in (runs/'history').iterdir()] == [f'{a.name}.csv']
    assert (runs/'history'/f'{a.name}.csv').read_bytes() == (a/'submission.csv').read_bytes() == (runs/'latest_submission.csv').read_bytes()
    shown = dialsum('runs', '--runs-dir', runs, '--status', 'interrupted')
    assert shown.returncode == 0 and shown.stdout.splitlines()[1].split()[:3] == [b.name, 'sweep_b', 'interrupted'], shown.stdout

    again = dialsum('sweep', sweep_configs/'a.yaml', sweep_configs/'b.yaml', '--resume', '--set', f'output.runs_dir={runs}')
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f'{b.name}: its process is gone; marked interrupted' in again.stdout
    s = summary(again.stdout)
    assert (s['a']['status'], s['b']['status'], s['b']['promoted']) == ('skipped', 'completed', 'yes')
    ix = read_index(runs).set_index('run_id')
    assert ix.status[b.name] == 'interrupted' and f'pid {p.pid}' in ix.error[b.name]
    assert sorted(ix.status) == ['completed', 'completed', 'interrupted']
    assert sorted(h.name for h in (runs/'history').iterdir()) == sorted(f"{r}.csv" for r in ix.index[ix.status == 'completed'])


def test_sigterm_records_interrupted(sweep_configs, tmp_path):
    "SIGTERM to a sweep (what `kill` sends) stops it like Ctrl-C: the run is recorded as interrupted, the summary printed, exit 130."
    runs = tmp_path/'runs'
    p = start_sweep(runs, sweep_configs/'a.yaml', sweep_configs/'b.yaml')
    a = wait_for_kernel(p, runs, 'sweep_a')
    p.send_signal(signal.SIGTERM)
    out = p.communicate(timeout=120)[0]
    assert p.returncode == 130, out[-3000:]
    s = summary(out)
    assert (s['a']['status'], s['b']['status']) == ('interrupted', 'not run'), out[-3000:]
    assert metadata(a)['status'] == 'interrupted'
    assert read_index(runs).status.tolist() == ['interrupted']


@pytest.mark.slow
def test_sweep_recovers_a_run_that_failed_at_its_submission(sweep_configs, tmp_path):
    "A real run trains, then fails at its submission step (promotion cannot write: a file stands where runs/history/ goes); "
    "the sweep itself, without --resume, predicts again with the run's best checkpoint, and that submission is valid and promoted."
    from dialsum.sweep import run_sweep, sweep_exit_code
    runs = tmp_path/'runs'; runs.mkdir()
    (runs/'history').write_text('a file where the folder of promoted submissions should be\n')
    said = []
    def say(line):  # the fault clears (as a disk that was full gets room) when the sweep announces the recovery
        said.append(line)
        if 'recovering it with dialsum predict' in line and (runs/'history').is_file(): (runs/'history').unlink()
    (e,) = run_sweep([sweep_configs/'a.yaml'], [f'output.runs_dir={runs}'], ROOT, gpu_query=lambda: None, say=say)
    assert (e.status, e.promoted, sweep_exit_code([e])) == ('recovered', True, 0), said
    (run,) = run_folders(runs)
    md = metadata(run)
    assert md['train'] and md['status'] == 'completed' and md['promoted'] is True and md['submission_valid'] is True
    assert 'trained but its submission was never checked and promoted: recovering it' in ' '.join(said)
    nb = json.loads((run/'run.ipynb').read_text())  # the notebook failed at its last step, the promotion, on the blocked history/
    assert nb['metadata']['papermill']['exception'] is True and 'WriteError' in json.dumps(nb['cells'][-1]) and 'history' in json.dumps(nb['cells'][-1])
    assert md['recovered']['checkpoint'] == md['best_checkpoint']
    # before the recovery the run was recorded as failed at its promotion, never as completed
    assert md['recovered']['status_before'] == 'failed' and 'WriteError' in md['recovered']['error_before'], md['recovered']
    test_fnames = pd.read_csv(run/'data'/'test.csv', dtype=str)['fname'].tolist()
    assert submission_problems(run/'submission.csv', test_fnames, run/'data'/'sample_submission.csv') == []
    assert [h.name for h in (runs/'history').iterdir()] == [f'{run.name}.csv']
    assert (runs/'history'/f'{run.name}.csv').read_bytes() == (run/'submission.csv').read_bytes() == (runs/'latest_submission.csv').read_bytes()
    ix = read_index(runs)
    assert ix.run_id.tolist() == [run.name] and ix.status.tolist() == ['completed']
    assert ix.error[0].startswith('submission recovered by dialsum predict')


def mismatched_data(d, sample_fnames):
    "Demo CSVs in `d` with a sample_submission.csv of `sample_fnames`, and a config that trains on them."
    from dialsum.data import make_demo_data
    paths = make_demo_data(d, n_train=48, n_dev=8, n_test=8)
    pd.DataFrame(dict(fname=sample_fnames, summary='-')).to_csv(paths['sample_submission'], index=False)
    cfg = d/'mismatch.yaml'
    cfg.write_text(f"base: {SMOKE}\nexperiment: mismatch\ndata: {{demo: null, train: {paths['train']}, dev: {paths['dev']}, "
                   f"test: {paths['test']}, sample_submission: {paths['sample_submission']}}}\n")
    return cfg, paths


@pytest.mark.slow
def test_unpromoted_submission_is_not_done(tmp_path):
    "`dialsum run` of a config whose sample_submission.csv does not match test.csv fails in its preflight, before training, exit 1; "
    "--resume runs it again once the sample file is right (nothing trained to recover), promotes it, and skips it after."
    cfg, paths = mismatched_data(tmp_path, [f'other_{i}' for i in range(8)])
    runs = tmp_path/'runs'
    p = dialsum('run', cfg, f'output.runs_dir={runs}')
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    assert 'PreflightError' in p.stderr and 'the fnames differ from sample_submission.csv' in p.stderr, p.stderr
    (first,) = run_folders(runs)
    md = metadata(first)
    assert (md['status'], md['stage'], 'train' in md, (first/'checkpoints').exists()) == ('failed', 'preflight', False, False)

    pd.read_csv(paths['test'], dtype=str)[['fname']].assign(summary='-').to_csv(paths['sample_submission'], index=False)
    fixed = dialsum('sweep', cfg, '--resume', '--set', f'output.runs_dir={runs}')
    assert fixed.returncode == 0, fixed.stdout[-3000:] + fixed.stderr[-3000:]
    s = summary(fixed.stdout)['mismatch']
    assert (s['status'], s['promoted']) == ('completed', 'yes') and s['run_id'] != first.name, s
    assert metadata(runs/s['run_id'])['promoted'] is True and metadata(first)['status'] == 'failed'
    skipped = dialsum('sweep', cfg, '--resume', '--set', f'output.runs_dir={runs}')
    assert skipped.returncode == 0 and summary(skipped.stdout)['mismatch']['status'] == 'skipped', skipped.stdout[-3000:]


def test_resume_refuses_an_index_id_outside_runs(tmp_path):
    "An index row of the config whose run_id was edited to ../outside (a completed run there): --resume neither skips nor touches it."
    from dialsum.config import config_hash, load_config
    from dialsum.files import write_json
    from dialsum.submissions import index_row, update_index
    runs, outside = tmp_path/'runs', tmp_path/'outside'
    chash = config_hash(load_config(SMOKE, [f'output.runs_dir={runs}'], ROOT))
    outside.mkdir(); (outside/'submission.csv').write_text('fname,summary\n')
    write_json(outside/'metadata.json', dict(run_id='outside', experiment='smoke', status='completed', config_hash=chash, train={'global_step': 8}))
    update_index(runs, {**index_row(outside), 'run_id': '../outside'})
    before = (outside/'metadata.json').read_bytes()
    p = dialsum('sweep', SMOKE, '--resume', '--set', f'output.runs_dir={runs}')
    assert p.returncode == 1, p.stdout[-3000:] + p.stderr[-3000:]
    s = summary(p.stdout)['smoke']
    assert s['status'] == 'failed' and "run_id '../outside' is not a run of" in p.stdout, p.stdout[-3000:]
    assert (outside/'metadata.json').read_bytes() == before and sorted(outside.iterdir()) == [outside/'metadata.json', outside/'submission.csv']
    (rec,) = run_folders(runs)  # the refusal itself is recorded, nothing trained
    assert metadata(rec)['status'] == 'failed' and 'index.csv' in metadata(rec)['error'] and not (rec/'checkpoints').exists()


@pytest.mark.slow
def test_resume_continues_a_run_killed_while_training(tmp_path):
    "kill -9 of a sweep and its kernel after the run's first complete checkpoint: sweep --resume continues that run in its own folder."
    from dialsum.checkpoints import resume_problems
    runs, cfg = tmp_path/'runs', tmp_path/'long.yaml'
    cfg.write_text(f"base: {SMOKE}\nexperiment: long\ntraining: {{max_steps: 30, eval_steps: 5, save_total_limit: null, "
                   "early_stopping_patience: null}\n")
    p = start_sweep(runs, cfg)
    deadline = time.time() + 400
    while not list(runs.glob('long_*/checkpoints/checkpoint-*/trainer_state.json')):
        assert p.poll() is None and time.time() < deadline, 'the run ended (or took too long) before its first checkpoint'
        time.sleep(0.02)
    (run,) = run_folders(runs)
    kernel = metadata(run)['process']['pid']
    os.killpg(p.pid, signal.SIGKILL)
    try: os.kill(kernel, signal.SIGKILL)
    except ProcessLookupError: pass
    p.wait(60)
    assert not metadata(run).get('train'), 'the kill came after training'
    done = [c for c in sorted((run/'checkpoints').glob('checkpoint-*'), key=lambda c: int(c.name.split('-')[1])) if not resume_problems(c)]
    assert done and done[-1].name != 'checkpoint-30'
    again = dialsum('sweep', cfg, '--resume', '--set', f'output.runs_dir={runs}')
    assert again.returncode in (0, 1), again.stdout[-3000:] + again.stderr[-3000:]  # 1 only when the tiny model's submission is invalid
    assert f'{run.name} stopped while training: continuing it in its folder from' in again.stdout, again.stdout[-3000:]
    assert run_folders(runs) == [run], 'the sweep started a new folder instead of continuing'
    md = metadata(run)
    assert md['train']['global_step'] == 30 and md['attempts'] == 2, md.get('error')
    assert md['resumed_from'].startswith('checkpoints/checkpoint-') and int(md['resumed_from'].split('-')[1]) >= int(done[-1].name.split('-')[1])
    state = json.loads((run/'checkpoints'/'trainer_state.json').read_text())
    assert [h['step'] for h in state['log_history'] if 'loss' in h][-1] == 30
    record('sweep-resume-continues', 'Faults', 'kill -9 of a sweep (and its kernel) after the first complete checkpoint, then sweep --resume',
           'continues the run from its newest complete checkpoint in its own folder', f"{md['status']}, one folder",
           f"resumed from {md['resumed_from']}; global step {md['train']['global_step']}, {md['attempts']} attempts")


@pytest.mark.slow
def test_sweep_never_touches_cuda_and_does_not_repeat_a_useless_recovery(tmp_path):
    "In the sweep's own process CUDA is never asked for; a recovery that made the same invalid submission is not repeated by --resume."
    import torch
    from unittest import mock
    from dialsum.sweep import run_sweep, sweep_exit_code
    runs, cfg = tmp_path/'runs', tmp_path/'cut.yaml'
    cfg.write_text(f"base: {SMOKE}\nexperiment: cut\ndata: {{max_test_samples: 4}}\n")  # every submission of it is refused
    calls = []
    def no_cuda(name): return lambda *a, **k: calls.append(name) or False
    with mock.patch.object(torch.cuda, 'is_available', no_cuda('is_available')), \
         mock.patch.object(torch.cuda, 'is_bf16_supported', no_cuda('is_bf16_supported')), \
         mock.patch.object(torch.cuda, 'init', no_cuda('init')), mock.patch.object(torch.cuda, 'device_count', no_cuda('device_count')):
        said = []
        (e,) = run_sweep([cfg], [f'output.runs_dir={runs}'], ROOT, gpu_query=lambda: None, say=said.append)
        assert e.status == 'failed' and 'recovering it with dialsum predict' in ' '.join(said), said
        (run,) = run_folders(runs); first = metadata(run)['recovered']
        said.clear()
        (e2,) = run_sweep([cfg], [f'output.runs_dir={runs}'], ROOT, resume=True, gpu_query=lambda: None, say=said.append)
    assert calls == [], f'the sweep process asked CUDA: {calls}'
    assert (e2.status, sweep_exit_code([e2])) == ('failed', 1) and e2.note.startswith('not recovered again'), (e2, said)
    assert 'recovering it' not in ' '.join(said) and metadata(run)['recovered'] == first, 'the recovery ran again'
    assert metadata(run)['status'] == 'failed' and not (runs/'latest_submission.csv').exists()
    assert run_folders(runs) == [run]
    record('sweep-recovery-not-repeated', 'Faults', 'sweep --resume of a run whose recovery already made the same invalid submission '
           '(test split cut by data.max_test_samples)', 'not recovered again without a change', 'failed, exit 1, nothing promoted', e2.note)
    record('sweep-no-cuda', 'Resources', 'a sweep with a run and a recovery, torch.cuda patched to log every call',
           'the sweep process never asks CUDA (the kernel and the recovery process do)', 'no call', 'torch.cuda calls: none')
