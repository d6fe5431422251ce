"`dialsum predict | runs | best | compare` on the runs of one sweep (the `swept` fixture in conftest.py)."
import json, shutil
from pathlib import Path

import pandas as pd
import pytest

from casebook import OLD_RUN, assert_kept, prior_runs, record, snapshot
from conftest import BIN, ROOT, dialsum, run_folders
from dialsum.config import DialsumError
from dialsum.inference import refuse_output
from dialsum.metrics import bootstrap_ci
from dialsum.submissions import read_index


def run_of(runs, experiment):
    (r,) = [r for r in run_folders(runs) if json.loads((r/'metadata.json').read_text())['experiment'] == experiment]
    return r


@pytest.mark.slow  # uses the shared sweep of conftest.py (about a minute)
def test_predict_from_run(swept, tmp_path):
    "predict by experiment name reproduces the run's submission byte for byte, says which checkpoint and why; --checkpoint overrides."
    runs = swept[1]; a = run_of(runs, 'sweep_a')
    md = json.loads((a/'metadata.json').read_text())
    p = dialsum('predict', '--run', 'sweep_a', '--runs-dir', runs, '--input', a/'data'/'test.csv', '--output', tmp_path/'out.csv')
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path/'out.csv').read_bytes() == (a/'submission.csv').read_bytes()
    lines = p.stdout.splitlines()
    assert lines[1] == f"checkpoint {a/md['best_checkpoint']}" and lines[2].strip().startswith('chosen:  best eval_score'), p.stdout
    assert lines[-1].startswith(f"wrote      {tmp_path/'out.csv'} (8 rows, valid")

    (other,) = [c for c in (a/'checkpoints').glob('checkpoint-*') if c.name != Path(md['best_checkpoint']).name]
    p = dialsum('predict', '--run', a, '--checkpoint', other, '--input', a/'data'/'dev.csv', '--output', tmp_path/'dev.csv')
    assert p.returncode == 0 and 'given with --checkpoint' in p.stdout, p.stderr[-3000:]
    out = pd.read_csv(tmp_path/'dev.csv', dtype=str, keep_default_na=False)
    assert out.columns.tolist() == ['fname', 'summary'] and out.fname.tolist() == pd.read_csv(a/'data'/'dev.csv', dtype=str).fname.tolist()

    p = dialsum('predict', '--run', 'sweep_c', '--runs-dir', runs, '--output', tmp_path/'x.csv')
    assert p.returncode == 2 and "no runs of experiment 'sweep_c'" in p.stderr and not (tmp_path/'x.csv').exists()
    (tmp_path/'bad.csv').write_text('fname,dialogue\nt1,\n')
    p = dialsum('predict', '--run', a, '--input', tmp_path/'bad.csv', '--output', tmp_path/'y.csv')
    assert p.returncode == 2 and 'bad.csv' in p.stderr and not (tmp_path/'y.csv').exists()


@pytest.mark.slow  # uses the shared sweep of conftest.py (about a minute)
def test_runs_best_compare(swept, tmp_path):
    "runs lists best first and filters; best names the best completed run and its file; compare pairs the per-row dev scores."
    runs = swept[1]; ix = read_index(runs)
    p = dialsum('runs', '--runs-dir', runs)
    assert p.returncode == 0
    # equal dev scores (the tiny sweep models can tie) list the newer run first
    done = ix[ix.status == 'completed'].sort_values(['dev_score', 'started'], ascending=[False, False])
    failed = ix[ix.status == 'failed'].sort_values('started', ascending=False, kind='stable')  # no dev score: newest first
    assert [l.split()[0] for l in p.stdout.splitlines()[1:]] == done.run_id.tolist() + failed.run_id.tolist()
    p = dialsum('runs', '--runs-dir', runs, '--status', 'failed')
    assert [l.split()[:3] for l in p.stdout.splitlines()[1:]] == [[r, e, 'failed'] for r, e in zip(failed.run_id, failed.experiment)]
    assert sorted(failed.experiment) == ['broken', 'typo']  # the config that did not validate is a run too
    assert dialsum('runs', '--runs-dir', runs, '--experiment', 'sweep_b').stdout.splitlines()[1].split()[1] == 'sweep_b'

    p = dialsum('best', '--runs-dir', runs)
    best = done.iloc[0]
    assert p.returncode == 0 and p.stdout.splitlines()[0].split()[2] == best.run_id
    assert p.stdout.splitlines()[-1] == f"submission {(runs/best.run_id/'submission.csv').resolve()}"

    # the tiny sweep models may score alike on every dev row; a copy of the runs with three rows of B moved makes the listing certain
    runs = Path(shutil.copytree(runs, tmp_path/'runs'))
    pb = run_of(runs, 'sweep_b')/'predictions_dev.csv'
    moved = pd.read_csv(pb, dtype={'fname': str}, keep_default_na=False)
    moved.loc[[1, 4, 6], 'score'] += [30.0, -50.0, 10.0]
    moved.to_csv(pb, index=False)
    p = dialsum('compare', 'sweep_a', 'sweep_b', '--runs-dir', runs, '--top', '3')
    assert p.returncode == 0, p.stderr
    da, db = (pd.read_csv(run_of(runs, e)/'predictions_dev.csv', dtype={'fname': str}).set_index('fname') for e in ('sweep_a', 'sweep_b'))
    d = (db.score - da.score.reindex(db.index))
    lo, hi = bootstrap_ci(d.values)
    assert f"B - A: {d.mean():+.2f} (paired bootstrap 95% interval {lo:+.2f} to {hi:+.2f}; {len(d)} dev rows" in p.stdout, p.stdout
    listed = [l.split()[0] for l in p.stdout.split('dev rows that changed most:')[1].strip().splitlines()[1:]]
    assert listed == d.abs().sort_values(ascending=False, kind='stable').index[:3].tolist()


@pytest.mark.slow  # uses the shared sweep of conftest.py (about a minute)
def test_runs_plot(swept, tmp_path):
    "--plot writes the PNG it names (dialsum.plots.plot_runs), after the table."
    p = dialsum('runs', '--runs-dir', swept[1], '--plot', tmp_path/'runs.png')
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.splitlines()[-1] == f"plot written to {tmp_path/'runs.png'}"
    assert (tmp_path/'runs.png').stat().st_size > 1000 and (tmp_path/'runs.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_hand_edited_run_id_is_refused(tmp_path):
    "An index row whose run_id was edited to ../outside (a better-looking completed run there): runs, best and compare refuse it, exit 2."
    from dialsum.files import write_json
    from dialsum.submissions import index_row, update_index
    runs, outside = tmp_path/'runs', tmp_path/'outside'
    for d, score in ((runs/'ok_20260101-000000', 20.0), (outside, 99.0)):
        d.mkdir(parents=True); (d/'submission.csv').write_text('fname,summary\ntest_0,a\n')
        write_json(d/'metadata.json', dict(run_id=d.name, experiment='ok', status='completed', submission='submission.csv',
                                           dev=dict(score=score, rouge1=score, rouge2=score, rougeL=score)))
        update_index(runs, {**index_row(d), 'run_id': d.name if d.parent == runs else '../outside'})
    for args in (('runs',), ('best',), ('runs', '--status', 'completed')):
        p = dialsum(*args, '--runs-dir', runs)
        assert p.returncode == 2 and "index.csv: run_id '../outside' is not a run of" in p.stderr and 'outside' not in p.stdout, (args, p.stderr)
    p = dialsum('compare', 'ok_20260101-000000', '../outside', '--runs-dir', runs)
    assert p.returncode == 2 and "run '../outside'" in p.stderr and "no '..'" in p.stderr, p.stderr


def test_nothing_starts_on_bad_arguments(tmp_path):
    "A pattern that matches nothing, a malformed override, an empty runs folder: exit 2 with the reason, nothing written."
    p = dialsum('sweep', 'configs/experimnts/*.yaml', '--set', f'output.runs_dir={tmp_path}')
    assert p.returncode == 2 and 'configs/experimnts/*.yaml: no config file matches' in p.stderr
    p = dialsum('sweep', 'configs/experiments/smoke.yaml', '--set', f'output.runs_dir={tmp_path}', 'learning_rate')
    assert p.returncode == 2 and "override 'learning_rate'" in p.stderr
    assert list(tmp_path.iterdir()) == []
    p = dialsum('runs', '--runs-dir', tmp_path)
    assert p.returncode == 0 and p.stdout.strip() == f'no runs in {tmp_path}'
    p = dialsum('best', '--runs-dir', tmp_path)
    assert p.returncode == 2 and 'no completed run' in p.stderr


@pytest.mark.slow  # uses the shared sweep of conftest.py (about a minute)
def test_predict_never_overwrites_a_record(swept, tmp_path):
    "predict --output refuses its input, a run folder's files, history/, latest_submission.csv, index.csv, and an existing file without --force."
    runs = Path(shutil.copytree(swept[1], tmp_path/'runs')); a = run_of(runs, 'sweep_a')
    inp, mine = tmp_path/'in.csv', tmp_path/'mine.csv'
    shutil.copy(a/'data'/'test.csv', inp); mine.write_text('my own notes\n')
    before, kept = snapshot(runs), {p: p.read_bytes() for p in (inp, mine)}
    (hist,) = list((runs/'history').iterdir())[:1]
    cases = [(inp, 'the input it reads'), (a/'predictions_dev.csv', 'inside the run folder'), (a/'submission.csv', 'inside the run folder'),
             (hist, 'the promoted submissions'), (runs/'history'/'new.csv', 'the promoted submissions'),
             (runs/'latest_submission.csv', 'written by runs only'), (runs/'index.csv', 'written by runs only'), (mine, 'give --force')]
    msgs = []
    for out, words in cases:  # the check predict makes before it loads a model; two of them through the command line
        with pytest.raises(DialsumError) as e: refuse_output(out, inp, a, runs, ROOT)
        assert words in str(e.value) and str(out) in str(e.value), (out, str(e.value))
        msgs.append(str(e.value))
    for out, words in (cases[0], cases[-1]):
        p = dialsum('predict', '--run', a, '--input', inp, '--output', out, '--runs-dir', runs)
        assert p.returncode == 2 and words in p.stderr and str(out) in p.stderr, (out, p.stderr[-2000:])
        assert 'Traceback' not in p.stderr
    assert snapshot(runs) == before and not (runs/'history'/'new.csv').exists(), 'a record changed'
    assert {p: p.read_bytes() for p in kept} == kept
    p = dialsum('predict', '--run', a, '--input', inp, '--output', mine, '--runs-dir', runs, '--force')
    assert p.returncode == 0, p.stderr[-2000:]
    assert mine.read_bytes() == (a/'submission.csv').read_bytes() and not list(tmp_path.glob('*.tmp'))
    record('predict-output-records', 'Records', 'dialsum predict --output naming its --input, a run\'s predictions_dev.csv or '
           'submission.csv, runs/history/, runs/latest_submission.csv, runs/index.csv, or an existing file',
           'refused, nothing written; --force replaces only a file of the user\'s', 'exit 2, every file unchanged',
           ' | '.join(m.splitlines()[-1] for m in msgs[::3]), tmp_path)


def test_compare_with_a_moved_run_folder(tmp_path):
    "compare naming a run folder that was moved out of the runs folder says so (not 'no runs of experiment')."
    runs = prior_runs(tmp_path/'runs'); before = snapshot(runs)
    (runs/OLD_RUN).rename(tmp_path/OLD_RUN)
    before = snapshot(runs)
    p = dialsum('compare', OLD_RUN, OLD_RUN, '--runs-dir', runs)
    assert p.returncode == 2 and f"'{OLD_RUN}': no run folder of that name in {runs}" in p.stderr and 'moved or deleted' in p.stderr, p.stderr
    assert 'no runs of experiment' not in p.stderr and 'Traceback' not in p.stderr
    assert snapshot(runs) == before
    record('compare-moved-run', 'Messages', 'dialsum compare RUN_ID RUN_ID after the run folder was moved out of runs/',
           'says the folder is gone and how to name it', 'exit 2', p.stderr, tmp_path)


def test_index_with_an_extra_column_leaves_no_running_folder(tmp_path):
    "An index.csv another tool gave an extra column: dialsum run refuses before making a run folder; the index is unchanged."
    runs = prior_runs(tmp_path/'runs')
    ix = pd.read_csv(runs/'index.csv', dtype=str, keep_default_na=False); ix['note'] = 'mine'; ix.to_csv(runs/'index.csv', index=False)
    before, names = snapshot(runs), sorted(q.name for q in runs.iterdir())
    p = dialsum('run', ROOT/'configs'/'experiments'/'smoke.yaml', f'output.runs_dir={runs}')
    assert p.returncode == 2 and 'index.csv: its header is not the run index schema' in p.stderr and "unexpected columns 'note'" in p.stderr, p.stderr
    assert sorted(q.name for q in runs.iterdir()) == names, 'a run folder was left behind'
    assert snapshot(runs) == before
    record('index-extra-column', 'Records', 'runs/index.csv with an extra column added by another tool, then dialsum run',
           'refused before a run folder exists', 'exit 2, no orphan `running` folder, the index unchanged', p.stderr, tmp_path)


def test_runs_into_a_closed_pipe(tmp_path):
    "dialsum runs | head -1: the reader closes the pipe early; no BrokenPipeError traceback, exit 141 (SIGPIPE), like other commands."
    import subprocess
    from dialsum.files import write_csv, write_json
    from dialsum.submissions import INDEX_COLUMNS, index_row
    runs, rows = tmp_path/'runs', []
    for i in range(300):  # more than a pipe holds: the writer meets the closed end for certain
        d = runs/f'r_20260101-{i:06d}'; d.mkdir(parents=True)
        write_json(d/'metadata.json', dict(run_id=d.name, experiment='r', status='failed', error='x' * 50)); rows.append(index_row(d))
    write_csv(runs/'index.csv', pd.DataFrame(rows, columns=INDEX_COLUMNS))
    p = subprocess.run(f"'{BIN/'dialsum'}' runs --runs-dir '{runs}' | head -1", shell=True, cwd=ROOT, capture_output=True, text=True,
                       executable='/bin/bash')
    assert p.stdout.split()[:3] == ['run_id', 'experiment', 'status'], p.stdout
    assert 'Traceback' not in p.stderr and 'BrokenPipeError' not in p.stderr, p.stderr
    q = subprocess.Popen([str(BIN/'dialsum'), 'runs', '--runs-dir', str(runs)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    q.stdout.close(); err = q.stderr.read().decode(); q.wait(60)
    assert q.returncode == 141 and 'Traceback' not in err, (q.returncode, err)
    record('runs-broken-pipe', 'Messages', 'dialsum runs | head -1 (the reader closes the pipe)', 'no traceback',
           f'exit {q.returncode}, stderr empty' if not err.strip() else err)
