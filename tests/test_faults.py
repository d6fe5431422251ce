"""Faults: a job killed with SIGKILL while it trains or writes, and two runs started in the same second.

A kill -9 cannot be caught, so what survives it is what was on disk: the trainer's checkpoints and
dialsum's atomic writes. These tests kill real processes and check that nothing torn is trusted and
that the next run carries on."""
import json, os, signal, subprocess, sys, time
from datetime import datetime
from pathlib import Path

import pandas as pd
import psutil
import pytest

from casebook import OLD_RUN, assert_kept, prior_runs, record, snapshot
from conftest import BIN, ROOT, dialsum, run_folders

SMOKE = ROOT/'configs'/'experiments'/'smoke.yaml'


def kill_tree(proc):
    "SIGKILL `proc` and everything it started (the papermill kernel runs in a session of its own)."
    try: family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess: family = []
    for p in [psutil.Process(proc.pid)] + family if proc.poll() is None else family:
        try: p.kill()
        except psutil.NoSuchProcess: pass
    proc.wait(timeout=60)
    psutil.wait_procs(family, timeout=30)


@pytest.mark.slow
def test_kill_during_training_then_resume(tmp_path):
    "kill -9 after the first complete checkpoint; `dialsum run --resume` continues from the newest complete one and completes."
    from dialsum.checkpoints import resume_problems
    runs = tmp_path/'runs'
    over = [f'output.runs_dir={runs}', 'training.max_steps=30', 'training.eval_steps=5', 'training.save_total_limit=null',
            'training.early_stopping_patience=null']
    log = open(tmp_path/'first.log', 'w')
    proc = subprocess.Popen([str(BIN/'dialsum'), 'run', str(SMOKE), *over], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.time() + 400
    while not list(runs.glob('*/checkpoints/checkpoint-*/trainer_state.json')):
        assert proc.poll() is None, f"the run ended before its first checkpoint: {(tmp_path/'first.log').read_text()[-2000:]}"
        assert time.time() < deadline, 'no checkpoint within 400 s'
        time.sleep(0.02)
    kill_tree(proc); log.close()
    (run,) = run_folders(runs)
    assert json.loads((run/'metadata.json').read_text())['status'] == 'running'  # a killed job cannot record its end
    ckpts = sorted((run/'checkpoints').glob('checkpoint-*'), key=lambda p: int(p.name.split('-')[1]))
    complete = [c for c in ckpts if not resume_problems(c)]
    assert complete and complete[-1].name != 'checkpoint-30', [c.name for c in ckpts]
    last = complete[-1]
    stamps = {f.name: f.stat().st_mtime_ns for f in last.iterdir()}
    torn = [c.name for c in ckpts if c not in complete]

    p = dialsum('run', SMOKE, *over, '--resume', run.name)
    assert p.returncode == 0, p.stdout + p.stderr[-3000:]
    assert run_folders(runs) == [run], 'the resumed run must stay in its own folder'
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'completed' and 0 <= md['dev']['score'] <= 100, md.get('error')
    assert json.loads((run/'metrics.json').read_text())['dev']['score'] == md['dev']['score']
    sub = pd.read_csv(run/'submission.csv', dtype=str, keep_default_na=False)
    assert sub.fname.tolist() == [f'test_{i}' for i in range(8)]
    assert not resume_problems(run/md['best_checkpoint'])
    assert md['resumed_from'] == f'checkpoints/{last.name}' and md['attempts'] == 2
    assert md['train']['global_step'] == 30
    # training went on from the checkpoint: it was not written again, and steps after it were
    assert {f.name: f.stat().st_mtime_ns for f in last.iterdir()} == stamps
    state = json.loads((run/'checkpoints'/'trainer_state.json').read_text())
    steps = [h['step'] for h in state['log_history'] if 'loss' in h]
    assert steps == sorted(set(steps)) and steps[-1] == 30
    assert (run/'checkpoints'/'checkpoint-30').is_dir()
    ix = pd.read_csv(runs/'index.csv', dtype=str, keep_default_na=False)
    assert ix.run_id.tolist() == [run.name] and ix.status.tolist() == ['completed']
    if md['submission_valid']:  # a tiny model may write empty summaries, which are (rightly) not promoted
        assert (runs/'latest_submission.csv').read_bytes() == (run/'submission.csv').read_bytes()
    record('fault-kill-during-training', 'Faults', 'kill -9 of dialsum run (and its kernel) after the first complete checkpoint, '
           'then dialsum run --resume RUN', 'continues', 'completed',
           f"resumed from {last.name} (torn then: {', '.join(torn) or 'none'}); global step {md['train']['global_step']}, "
           f"{md['attempts']} attempts, one index row, the record completed")


WRITER = r"""
import os, sys, time
from pathlib import Path
from dialsum.files import atomic_write, write_json
from dialsum.submissions import update_index
runs, rows, stall, stall_at = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[4], int(sys.argv[5])
real_replace, renames = os.replace, {}
def replace(src, dst):  # the last step of an atomic write: on the chosen write, stop just before it and wait for the kill
    n = renames[Path(dst).name] = renames.get(Path(dst).name, 0) + 1
    if Path(dst).name == stall and n == stall_at:
        (runs/'inside').touch(); time.sleep(3600)
    return real_replace(src, dst)
os.replace = replace
for i in range(10**9):
    tag = f'{sys.argv[3]}-{i:05d}'
    body = 'fname,summary\n' + ''.join(f'test_{j},{tag} #Person1#이 {j}번째 요약을 쓴다.\n' for j in range(rows))
    atomic_write(runs/'latest_submission.csv', body)
    write_json(runs/'run'/'metadata.json', {'run_id': tag, 'status': 'completed', 'rows': rows})
    update_index(runs, dict(run_id=tag, experiment='writer', status='completed', dev_score=i))
    if i == 0: (runs/'started').touch()
"""


def test_kill_during_submission_and_index_writes(tmp_path):
    "SIGKILL a process that rewrites a submission, a metadata.json and the index in a loop: every file parses whole; the next write works."
    runs, rows = tmp_path/'runs', 20_000
    (runs/'run').mkdir(parents=True)
    # three kills land inside a write of each file (the writer stops before its rename and waits), two at a random moment
    plans = [('latest_submission.csv', 3), ('metadata.json', 4), ('index.csv', 5), ('never', 0), ('never', 0)]
    hits, seen = 0, set()
    for rounds, (stall, stall_at) in enumerate(plans, 1):
        for f in ('started', 'inside'): (runs/f).unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, '-c', WRITER, str(runs), str(rows), f'r{rounds}', stall, str(stall_at)],
                                stderr=subprocess.PIPE, text=True)
        deadline, wait_for = time.time() + 120, runs/('inside' if stall_at else 'started')
        while not wait_for.exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, f'the writer did not reach {wait_for.name} in 120 s'
            time.sleep(0.01)
        if not stall_at: time.sleep(0.1 + 0.07 * rounds)
        proc.send_signal(signal.SIGKILL); proc.wait(timeout=30)
        left = {p.name for p in runs.rglob('*.tmp')} - seen
        if stall_at: assert any(n.startswith(f'.{stall}.') for n in left), f'no temporary {stall} left by a kill inside its write: {left}'
        hits += bool(left); seen |= left  # killed mid-write: a new temporary file is there, the target is whole
        sub = pd.read_csv(runs/'latest_submission.csv', dtype=str, keep_default_na=False)
        assert len(sub) == rows and sub.summary.str.split(' ').str[0].nunique() == 1, 'torn or mixed submission'
        md = json.loads((runs/'run'/'metadata.json').read_text())
        assert md['rows'] == rows
        ix = pd.read_csv(runs/'index.csv', dtype=str, keep_default_na=False)
        assert ix.run_id.is_unique and (ix.status == 'completed').all() and ix.run_id.str.match(r'^r\d+-\d{5}$').all()
    assert hits >= 3, f'only {hits} kills landed inside a write'
    from dialsum.submissions import read_index, update_index
    n = len(read_index(runs))
    update_index(runs, dict(run_id='next_20260101-000000', experiment='next', status='completed'))  # the next run proceeds
    assert len(read_index(runs)) == n + 1 and read_index(runs).run_id.iat[-1] == 'next_20260101-000000'
    assert not list(runs.glob('.index.csv.*.tmp')), 'the next index write (holding the lock) removes what killed writers left'
    record('fault-kill-during-writes', 'Faults', 'kill -9 of a process rewriting latest_submission.csv, metadata.json and index.csv in a loop',
           'no torn file', 'whole files',
           f"{rounds} kills, {hits} inside a write (a hidden .tmp left, the target whole); every file parsed; the next index write worked")


CHILD = r'''
import sys, time
from datetime import datetime
from pathlib import Path
from dialsum.runs import new_run_dir
runs, go, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
(go.parent/f'ready-{sys.argv[4]}').touch()
while not go.exists(): time.sleep(0.002)
for _ in range(n): print(new_run_dir(runs, 'same', datetime(2026, 1, 1, 12, 0, 0)).name, flush=True)
'''


def test_same_name_same_second_two_processes(tmp_path):
    "Two processes each start 20 runs of one experiment in the same second: 40 distinct folders, none shared."
    runs, go = tmp_path/'runs', tmp_path/'go'
    procs = [subprocess.Popen([sys.executable, '-c', CHILD, str(runs), str(go), '20', tag], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for tag in ('a', 'b')]
    deadline = time.time() + 60
    while not all((tmp_path/f'ready-{t}').exists() for t in 'ab'):
        assert time.time() < deadline; time.sleep(0.005)
    go.touch()
    names = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        names += out.split()
    assert len(names) == 40 and len(set(names)) == 40
    assert sorted(names) == sorted(q.name for q in runs.iterdir())
    assert 'same_20260101-120000' in names and 'same_20260101-120000-40' in names
    record('fault-same-name-same-second', 'Faults', 'two processes starting 20 runs each of one experiment in the same second',
           'distinct folders', 'distinct folders', f'40 folders, same_20260101-120000 to same_20260101-120000-40')


PROMOTER = r"""
import os, sys, time
from pathlib import Path
from dialsum.submissions import promote
runs, run, stall, n = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
real_replace = os.replace
def replace(src, dst):  # stop just before the rename into `stall` (history/ or latest_submission.csv) and wait for the kill
    if stall in (Path(dst).name, Path(dst).parent.name):
        (runs/'inside').touch(); time.sleep(3600)
    return real_replace(src, dst)
os.replace = replace
promote(run, runs, [f'test_{i}' for i in range(n)])
"""


def test_kill_inside_promote(tmp_path):
    "SIGKILL inside each write of `promote`: latest and history stay whole (old or new); the next promotion works and removes the killed writes' temporary files."
    from dialsum.files import STALE_TEMP_SECONDS, write_json
    from dialsum.submissions import promote
    runs, n = tmp_path/'runs', 2000
    fnames = [f'test_{i}' for i in range(n)]
    def make(name):
        r = runs/name; r.mkdir(parents=True)
        write_json(r/'metadata.json', dict(run_id=name, experiment='p', status='completed'))
        (r/'submission.csv').write_text('fname,summary\n' + ''.join(f'{f},{name} #Person1#이 요약한다.\n' for f in fnames), encoding='utf-8')
        return r
    a, b, c = make('a_20260101-000000'), make('b_20260101-000000'), make('c_20260101-000000')
    subs = {r.name: (r/'submission.csv').read_bytes() for r in (a, b, c)}
    assert promote(a, runs, fnames)['promoted']
    killed = set()
    for stall, history in (('history', ['a_20260101-000000.csv']), ('latest_submission.csv', ['a_20260101-000000.csv', 'b_20260101-000000.csv'])):
        (runs/'inside').unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, '-c', PROMOTER, str(runs), str(b), stall, str(n)], stderr=subprocess.PIPE, text=True)
        deadline = time.time() + 120
        while not (runs/'inside').exists():
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, f'the promotion did not reach its {stall} write in 120 s'
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL); proc.wait(timeout=30)
        left = {p for p in runs.rglob(f'.*.{proc.pid}.*.tmp')}
        assert left, f'no temporary file of the killed promotion inside its {stall} write'
        killed |= left
        assert (runs/'latest_submission.csv').read_bytes() == subs['a_20260101-000000']  # the old one, whole
        assert sorted(p.name for p in (runs/'history').glob('*.csv')) == history
        for p in (runs/'history').glob('*.csv'): assert p.read_bytes() == subs[p.stem]  # each whole, never torn
    # a temporary file of a live writer stays; one older than the stale age goes, whoever wrote it
    live, old = runs/f'.latest_submission.csv.{os.getpid()}.live0000.tmp', runs/f'.latest_submission.csv.{os.getpid()}.old00000.tmp'
    for p in (live, old): p.write_text('half')
    os.utime(old, (time.time() - 2 * STALE_TEMP_SECONDS,) * 2)
    out = promote(c, runs, fnames)  # the next run proceeds
    assert out['promoted'] and (runs/'latest_submission.csv').read_bytes() == subs['c_20260101-000000']
    assert (runs/'history'/'c_20260101-000000.csv').read_bytes() == subs['c_20260101-000000']
    assert not [p for p in killed | {old} if p.exists()], 'stale temporary files left after the next promotion'
    assert {p for p in runs.rglob('*.tmp')} == {live}
    record('fault-kill-inside-promote', 'Faults', 'kill -9 of a promotion inside its history write, then inside its latest_submission.csv write',
           'no torn file', 'whole files',
           f"latest_submission.csv stayed the old one, history files whole; the next promotion worked and removed {len(killed) + 1} stale temporary files")


@pytest.fixture
def files(tmp_path):
    "The smoke-sized demo data as plain CSV files (train, dev, test, sample_submission), as a competition gives them."
    from dialsum.data import make_demo_data
    return make_demo_data(tmp_path/'data', 48, 8, 8)


def data_overrides(files, **given):
    "Overrides that read `files` instead of the generated demo data; `given` replaces some (None: null)."
    d = {s: str(files[s]) for s in ('train', 'dev', 'test', 'sample_submission')} | given
    return ['data.demo=null'] + [f"data.{k}={'null' if v is None else v}" for k, v in d.items()]


PREFLIGHT = {  # case: (what is wrong, the overrides, words the error must have)
    'wrong-sample': ('data.sample_submission names other fnames than test.csv', lambda f, t: data_overrides(f, sample_submission=t),
                     ['data.sample_submission', 'the fnames differ from wrong_sample.csv', 'missing 1']),
    'missing-sample': ('data.sample_submission names a file that does not exist',
                       lambda f, t: data_overrides(f, sample_submission=t.parent/'no_such_sample.csv'), ['no_such_sample.csv: sample submission not found']),
    'epoch-without-dev': ("training.eval_strategy=epoch with data.dev=null", lambda f, t: data_overrides(f, dev=None) +
                          ['training.eval_strategy=epoch', 'training.eval_steps=null'], ["training.eval_strategy is 'epoch' but data.dev is null"]),
    'all-at-once': ('a wrong sample submission, no dev split under eval_strategy=epoch and a folder as data.train',
                    lambda f, t: data_overrides(f, dev=None, sample_submission=t, train=f['train'].parent) +
                    ['training.eval_strategy=epoch', 'training.eval_steps=null'],
                    ['3 problem(s) found before training', 'data.dev is null', 'the fnames differ', 'is a folder']),
}


@pytest.mark.parametrize('case', list(PREFLIGHT))
def test_preflight_fails_before_training(case, files, tmp_path):
    "Inputs a run needs are checked before the first training step: a failed record (stage preflight), exit 1, no checkpoint, nothing promoted."
    what, over, words = PREFLIGHT[case]
    wrong = tmp_path/'wrong_sample.csv'; wrong.write_text('fname,summary\nother_0,x\n' + ''.join(f'test_{i},x\n' for i in range(7)))
    runs = prior_runs(tmp_path/'runs'); before = snapshot(runs)
    p = dialsum('run', SMOKE, f'output.runs_dir={runs}', 'training.max_steps=2000', *over(files, wrong))  # would train for minutes
    assert p.returncode == 1, p.stderr[-3000:]
    (run,) = [r for r in run_folders(runs) if r.name != OLD_RUN]
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'failed' and md['stage'] == 'preflight' and md['error'].startswith('PreflightError:'), md.get('error')
    for w in words: assert w in md['error'] and w in p.stderr, (w, md['error'])
    assert 'train' not in md and not (run/'checkpoints').exists(), 'training started'  # found before any model was loaded
    assert not (run/'submission.csv').exists()
    ix = pd.read_csv(runs/'index.csv', dtype=str, keep_default_na=False)
    assert ix.set_index('run_id').status[run.name] == 'failed'
    assert_kept(runs, before)
    record(f'preflight-{case}', 'Fails early', what, 'refused before training, every problem at once',
           f"exit 1, failed record (stage preflight) after {md['seconds']:.1f} s in the kernel, no checkpoint", md['error'], tmp_path)


def test_unpromoted_run_is_failed(tmp_path):
    "A run that trains but whose submission is refused (test split cut by data.max_test_samples) is failed, exit 1, recoverable; latest unchanged."
    from dialsum.runner import recoverable
    runs = prior_runs(tmp_path/'runs'); before = snapshot(runs)
    p = dialsum('run', SMOKE, f'output.runs_dir={runs}', 'data.max_test_samples=4')
    assert p.returncode == 1, p.stderr[-3000:]
    (run,) = [r for r in run_folders(runs) if r.name != OLD_RUN]
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'failed' and md['train'] and md['promoted'] is False, md.get('error')
    assert md['error'].startswith('submission not promoted: test split cut to 4 of 8 rows') and 'dialsum predict --run' in md['error']
    assert 'submission not promoted' in p.stderr and recoverable(run)
    assert pd.read_csv(runs/'index.csv', dtype=str, keep_default_na=False).set_index('run_id').status[run.name] == 'failed'
    assert_kept(runs, before)
    record('status-unpromoted-failed', 'Records', 'a run that trained but whose submission was not promoted (data.max_test_samples=4)',
           'failed with the reason, recoverable', 'exit 1, status failed, latest unchanged', md['error'], tmp_path)


@pytest.fixture
def small_disk(tmp_path):
    "A 1.5 MB tmpfs mounted for the test (room for a smoke run's records and a checkpoint or two), or a skip that says why."
    d = tmp_path/'small'; d.mkdir()
    p = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1500k', 'tmpfs', str(d)], capture_output=True, text=True)
    if p.returncode: pytest.skip(f'cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {p.stderr.strip()}')
    yield d
    subprocess.run(['umount', '-l', str(d)], check=False)


@pytest.mark.slow
def test_disk_full_while_training(small_disk, tmp_path):
    "The disk fills during a checkpoint save: failed with the reason, exit 1, run.ipynb whole, the torn checkpoint gone; resume completes."
    from dialsum.checkpoints import resume_problems
    runs = prior_runs(small_disk/'runs'); before = snapshot(runs)
    over = [f'output.runs_dir={runs}', 'resources.check_disk=false', 'training.max_steps=40', 'training.eval_steps=4',
            'training.save_total_limit=null', 'training.early_stopping_patience=null']  # every checkpoint kept: the disk must fill
    p = dialsum('run', SMOKE, *over)
    assert p.returncode == 1, p.stdout[-2000:] + p.stderr[-3000:]
    (run,) = [r for r in run_folders(runs) if r.name != OLD_RUN]
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'failed' and md['error'].startswith('WriteError: writing to') and 'the disk is full or failing' in md['error'], md
    assert 'WriteError' in p.stderr and 'Traceback' not in p.stderr
    nb = json.loads((run/'run.ipynb').read_text())  # whole JSON: papermill's saves are atomic
    assert any('WriteError' in str(o) for c in nb['cells'] for o in c.get('outputs', [])), 'the notebook does not show the failure'
    ckpts = sorted((run/'checkpoints').glob('checkpoint-*'))
    assert ckpts and not [c.name for c in ckpts if resume_problems(c)], 'a torn checkpoint was left'
    assert 'the torn checkpoint-' in md['error'] and f'--resume {run.name}' in md['error']
    ix = pd.read_csv(runs/'index.csv', dtype=str, keep_default_na=False).set_index('run_id')
    assert ix.status[run.name] == 'failed' and ix.error[run.name].startswith('WriteError')
    assert_kept(runs, before)
    subprocess.run(['mount', '-o', 'remount,size=64m', str(small_disk)], check=True)  # space freed: the run goes on where it stopped
    q = dialsum('run', SMOKE, *over, '--resume', run.name)
    assert q.returncode in (0, 1), q.stderr[-3000:]  # 1 only when the tiny model's submission is not valid
    md2 = json.loads((run/'metadata.json').read_text())
    assert md2['resumed_from'] == f'checkpoints/{ckpts[-1].name}' and md2['train']['global_step'] == 40, md2.get('error')
    record('fault-disk-full', 'Faults', 'the disk (a 1.5 MB tmpfs) fills while the trainer saves a checkpoint; then space is freed and '
           'the run resumed', 'failed with the reason, exit 1, an intact run.ipynb, no torn checkpoint; the resume continues',
           f"exit 1; {len(ckpts)} complete checkpoints kept; resumed from {ckpts[-1].name} to step 40", md['error'], small_disk, tmp_path)
