"`dialsum tune`: an Optuna study of dialsum runs (parallel workers, resume, pruning, TensorBoard); `dialsum sweep --jobs`."
import json
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from conftest import SMOKE, dialsum, run_folders
from dialsum.submissions import INDEX_COLUMNS, read_index
from dialsum.train import optuna_storage


def metadata(run): return json.loads((Path(run)/'metadata.json').read_text(encoding='utf-8'))


SPACE = 'training.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\ngeneration.num_beams: [1, 2]\n'


def load(storage, name): return optuna.load_study(study_name=name, storage=storage)


def test_misspelt_space_key_fails_before_any_trial(tmp_path):
    "A space key the schema lacks is refused, naming the closest valid key; no trial, run folder or study is made."
    (tmp_path/'space.yaml').write_text('training.lerning_rate: {low: 1.0e-5, high: 1.0e-4, log: true}\n')
    p = dialsum('tune', SMOKE, '--space', tmp_path/'space.yaml', '--trials', 2, '--set', f"output.runs_dir={tmp_path/'runs'}")
    assert p.returncode == 2, p.stdout + p.stderr
    assert "unknown key 'training.lerning_rate'; did you mean 'training.learning_rate'?" in p.stderr
    assert not (tmp_path/'runs').exists() or not list((tmp_path/'runs').iterdir())


@pytest.fixture(scope='module')
def study(tmp_path_factory):
    "Two workers run a study of 2 trials on one SQLite storage (each trial reporting to TensorBoard); then it resumes to 3."
    d = tmp_path_factory.mktemp('tune')
    (d/'space.yaml').write_text(SPACE)
    runs, db = d/'runs', f"sqlite:///{d/'study.db'}"
    args = [SMOKE, '--space', d/'space.yaml', '--storage', db, '--study', 's',
            '--set', f"output.runs_dir={runs}", 'training.report_to=[tensorboard]']
    first = dialsum('tune', *args, '--trials', 2, '--workers', 2)
    numbers_after_first = [t.number for t in load(db, 's').trials]
    second = dialsum('tune', *args, '--trials', 3)
    return d, runs, db, first, numbers_after_first, second


@pytest.mark.slow  # three smoke trials, two of them at once
def test_parallel_workers_and_resume(study):
    "Two workers share one study: distinct trials, one run folder and one index row each, each told its run's dev score; a rerun adds only what is missing."
    d, runs, db, first, numbers_after_first, second = study
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert numbers_after_first == [0, 1]  # two workers, two trials: no overshoot, no duplicate
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert 'study \'s\'' in second.stdout and '2 of 3 trials' in second.stdout  # resumed where it stopped
    st = load(db, 's')
    assert [(t.number, t.state) for t in st.trials] == [(i, TrialState.COMPLETE) for i in range(3)]
    ix = read_index(runs)  # parses: no torn file under two writers
    assert ix.columns.tolist() == INDEX_COLUMNS and len(pd.read_csv(runs/'index.csv')) == 3
    folders = run_folders(runs)
    assert sorted(ix.run_id) == sorted(f.name for f in folders) == sorted(t.user_attrs['run_id'] for t in st.trials)
    for t in st.trials:
        md = metadata(runs/t.user_attrs['run_id'])
        assert (md['status'], md['study'], md['trial'], md['params']) == ('completed', 's', t.number, t.params)
        assert t.value == pytest.approx(md['dev']['score'])  # the objective is the run's dev competition score
        assert md['train']['evaluations'] == len(t.intermediate_values) == 2  # every evaluation reported to the trial
        cfg = yaml.safe_load((runs/t.user_attrs['run_id']/'config.yaml').read_text())
        assert (cfg['training']['learning_rate'], cfg['generation']['num_beams']) == tuple(t.params.values())  # what was run
    assert len({t.params['training.learning_rate'] for t in st.trials}) == 3


@pytest.mark.slow
def test_tensorboard_events_of_a_trial(study):
    "A run with training.report_to: [tensorboard] writes event files into its folder with the loss, every dev score and the final one."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    d, runs, db, *_ = study
    t = load(db, 's').trials[0]
    ea = EventAccumulator(str(runs/t.user_attrs['run_id']/'tensorboard')).Reload()
    tags = ea.Tags()
    assert 'train/loss' in tags['scalars']
    assert [e.value for e in ea.Scalars('eval/score')] == pytest.approx(list(t.intermediate_values.values()))
    assert [e.value for e in ea.Scalars('eval/dev_score')] == pytest.approx([t.value])
    assert 'eval/diagnostics_length_ratio' in tags['scalars'] and 'eval/best_checkpoint/text_summary' in tags['tensors']


@pytest.mark.slow
def test_report(study):
    "--report lists the best trials and the parameter importances and draws the history and importance plots."
    d, runs, db, *_ = study
    p = dialsum('tune', '--report', 's', '--storage', db, '--runs-dir', runs)
    assert p.returncode == 0, p.stderr
    assert '3 complete' in p.stdout and 'parameter importances: ' in p.stdout
    best = max(load(db, 's').trials, key=lambda t: t.value)
    assert best.user_attrs['run_id'] in p.stdout.split('best ')[1].splitlines()[2]  # the best trial first
    assert (runs/'tune_s_history.png').stat().st_size > 0 and (runs/'tune_s_importances.png').stat().st_size > 0


@pytest.mark.slow  # one smoke trial, stopped at its first evaluation
def test_pruned_trial(tmp_path):
    "A trial scoring below the median of earlier trials at its first evaluation is pruned: training stops, the run is `pruned` in the index (not failed), the trial PRUNED (journal storage)."
    (tmp_path/'space.yaml').write_text('training.learning_rate: [1.0e-3]\n')
    db, runs = str(tmp_path/'p.journal'), tmp_path/'runs'  # a journal file: the storage workers on a shared disk use
    st = optuna.create_study(study_name='p', storage=optuna_storage(db), direction='maximize')  # an earlier trial: 100 at every step
    st.add_trial(optuna.trial.create_trial(value=100.0, intermediate_values={4: 100.0, 8: 100.0}, params={'training.learning_rate': 1e-3},
                                           distributions={'training.learning_rate': optuna.distributions.CategoricalDistribution([1e-3])}))
    p = dialsum('tune', SMOKE, '--space', tmp_path/'space.yaml', '--trials', 2, '--storage', db, '--study', 'p',
                '--startup-trials', 1, '--set', f"output.runs_dir={runs}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    t = optuna.load_study(study_name='p', storage=optuna_storage(db)).trials[1]
    assert t.state == TrialState.PRUNED and list(t.intermediate_values) == [4]
    (run,) = run_folders(runs)
    md = metadata(run)
    assert (md['status'], md['train']['global_step'], md['train']['pruned']['step']) == ('pruned', 4, 4)
    assert 'pruned at step 4' in md['error'] and not (run/'submission.csv').exists()
    ix = read_index(runs)
    assert ix.status.tolist() == ['pruned'] and not (runs/'latest_submission.csv').exists()


def test_gpus_give_each_worker_its_gpu(tmp_path, monkeypatch):
    "tune --gpus 0,1 starts one worker per GPU, each with CUDA_VISIBLE_DEVICES naming only its GPU; sweep --gpus does the same per config."
    import dialsum.sweep as sweep, dialsum.tune as tune
    envs = []
    class FakeProc:  # a child that did its work at once: tune's worker ends, sweep's child prints its entry
        def __init__(self, cmd, env=None, **kw): envs.append((cmd, env)); self.cmd, self.pid, self.returncode = cmd, 1, 0
        def wait(self, *a): return 0
        def poll(self): return 0
        def communicate(self):
            entry = dict(config=json.loads(self.cmd[-1])['config'], status='completed', promoted=True)
            return sweep._MARK + json.dumps(entry) + '\n', ''
    monkeypatch.setattr(tune.subprocess, 'Popen', FakeProc)
    (tmp_path/'space.yaml').write_text(SPACE)
    tune.tune(SMOKE, tmp_path/'space.yaml', 2, f"sqlite:///{tmp_path/'g.db'}", 'g', [f"output.runs_dir={tmp_path/'runs'}"],
              gpus='0,1', say=lambda s: None)
    assert [(e['CUDA_VISIBLE_DEVICES'], c[c.index('--workers') + 1], c[3]) for c, e in envs] == [('0', '1', 'tune'), ('1', '1', 'tune')]
    envs.clear()
    monkeypatch.setattr(sweep.subprocess, 'Popen', FakeProc)
    entries = sweep.run_sweep([SMOKE], [f"output.runs_dir={tmp_path/'runs'}"], gpus='3', say=lambda s: None)
    assert [e['CUDA_VISIBLE_DEVICES'] for _, e in envs] == ['3'] and [e.status for e in entries] == ['completed']


@pytest.mark.slow  # two smoke runs at once
def test_sweep_jobs_2(sweep_configs, tmp_path):
    "sweep --jobs 2 runs two configs at once: distinct run folders, one index row each, index.csv parses, both promoted, exit 0."
    runs = tmp_path/'runs'
    p = dialsum('sweep', sweep_configs/'a.yaml', sweep_configs/'b.yaml', '--jobs', 2, '--set', f"output.runs_dir={runs}")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert '2 at once (CPU)' in p.stdout and '2 configs: 2 completed' in p.stdout
    folders = run_folders(runs)
    ix = pd.read_csv(runs/'index.csv')
    assert sorted(ix.run_id) == sorted(f.name for f in folders) and len(folders) == 2
    assert sorted(ix.experiment) == ['sweep_a', 'sweep_b'] and set(ix.status) == {'completed'}
    assert all(metadata(f)['promoted'] for f in folders) and len(list((runs/'history').iterdir())) == 2
    starts = sorted(pd.to_datetime(ix.started)); ends = sorted(pd.to_datetime(ix.finished))
    assert starts[1] < ends[0]  # they ran at once


@pytest.mark.parametrize('tracker', ['wandb', 'mlflow'])
def test_missing_tracker_fails_at_validation(tmp_path, tracker):
    "A config that reports to a tracker that is not installed is refused before any run folder, naming the extra to install "
    "(the package is made absent for the command: `sys.modules[name] = None`, which `importlib.util.find_spec` reports as absent)."
    import subprocess, sys
    from conftest import ROOT
    hide = f"import sys; sys.modules[{tracker!r}] = None; from dialsum.cli import main; sys.exit(main(sys.argv[1:]))"
    p = subprocess.run([sys.executable, '-c', hide, 'run', str(SMOKE), f'training.report_to=[{tracker}]',
                        f"output.runs_dir={tmp_path/'runs'}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stdout + p.stderr
    assert f'training.report_to: {tracker} needs the {tracker} package' in p.stderr and 'pip install -e ".[track]"' in p.stderr
    assert not (tmp_path/'runs').exists() or not run_folders(tmp_path/'runs')


@pytest.mark.slow  # one smoke run
def test_wandb_record_of_a_run(tmp_path):
    "report_to: [wandb] in offline mode: one W&B run, named after the run id, whose summary (read back with wandb's own reader, "
    "`wandb leet inspect`) holds the training loss, the final dev score, the diagnostics, the best checkpoint and the submission."
    pytest.importorskip('wandb', reason='wandb is not installed (pip install -e ".[dev]" brings it)')
    import os, subprocess, sys
    from conftest import BIN, ROOT
    runs, wdir = tmp_path/'runs', tmp_path/'wandb_dir'
    env = {**os.environ, 'WANDB_MODE': 'offline', 'WANDB_DIR': str(wdir), 'WANDB_PROJECT': 'dialsum-test', 'WANDB_SILENT': 'true'}
    p = subprocess.run([str(BIN/'dialsum'), 'run', str(SMOKE), 'training.report_to=[wandb]', f'output.runs_dir={runs}'], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (run,) = run_folders(runs)
    md = metadata(run)
    (record,) = (wdir/'wandb').glob('offline-run-*/run-*.wandb')  # one W&B run for the dialsum run
    q = subprocess.run([sys.executable, '-m', 'wandb', 'leet', 'inspect', '--summary', '--json', str(record)],
                       capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert q.returncode == 0, q.stderr[-2000:]
    w = json.loads(q.stdout)
    summary = w['summary']
    assert w['name'] == run.name and w['state'] == 'finished', (w['name'], w['state'])
    assert 'train/loss' in summary and 'eval/score' in summary, sorted(summary)
    assert summary['eval/dev_score'] == pytest.approx(md['dev']['score'])
    assert 'eval/diagnostics_length_ratio' in summary
    assert summary['eval/run_id'] == run.name and summary['eval/submission'] == str(run/'submission.csv')
    assert (run/summary['eval/best_checkpoint']).is_dir()


@pytest.mark.slow  # one smoke run
def test_mlflow_record_of_a_run(tmp_path):
    "report_to: [mlflow] with a local SQLite tracking store: one MLflow run, named after the run id, holding the training loss, "
    "every dev score, the final dev score and diagnostics as metrics, and the best checkpoint and submission as tags."
    mlflow = pytest.importorskip('mlflow', reason='mlflow is not installed (pip install -e ".[dev]" brings mlflow-skinny)')
    import os, subprocess
    from conftest import BIN, ROOT
    uri, runs = f"sqlite:///{tmp_path/'mlflow.db'}", tmp_path/'runs'
    p = subprocess.run([str(BIN/'dialsum'), 'run', str(SMOKE), 'training.report_to=[mlflow]', f'output.runs_dir={runs}'], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, env={**os.environ, 'MLFLOW_TRACKING_URI': uri})
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    (run,) = run_folders(runs)
    md = metadata(run)
    mlflow.set_tracking_uri(uri)
    found = mlflow.search_runs(search_all_experiments=True, output_format='list')
    assert [r.info.run_name for r in found] == [run.name]  # one run: the results did not open a second, unnamed one
    r = found[0]
    assert r.info.status == 'FINISHED' and 'train_loss' in r.data.metrics and 'eval_score' in r.data.metrics
    assert r.data.metrics['eval_dev_score'] == pytest.approx(md['dev']['score'])
    assert 'eval_diagnostics_length_ratio' in r.data.metrics
    assert r.data.tags['eval_run_id'] == run.name and r.data.tags['eval_submission'] == str(run/'submission.csv')
    assert (run/r.data.tags['eval_best_checkpoint']).is_dir()
