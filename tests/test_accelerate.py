"Scale-out: the same experiment under `accelerate launch`, 2 CPU processes (gloo), one set of records written by the main process."
import json, os, subprocess, sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import BIN, ROOT, run_folders
from dialsum.checkpoints import find_checkpoint
from dialsum.submissions import submission_problems

ACCELERATE = ROOT/'configs'/'accelerate'


def launch(*args, timeout=900):
    "Run `accelerate launch ARGS` from the project folder, offline."
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false', 'OMP_NUM_THREADS': '1'}
    return subprocess.run([str(BIN/'accelerate'), 'launch', *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


def check_one_record(runs_dir: Path, processes: int):
    "Exactly one run folder, completed, with every record once, written for `processes` processes; one index row."
    (run,) = run_folders(runs_dir)
    assert sorted(p.name for p in runs_dir.iterdir() if p.is_dir() and p.name != '.features') == ['history', run.name]  # no second run folder
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'completed', md.get('error')
    assert md['processes'] == processes and md['device']['processes'] == processes
    assert md['attempts'] == 1  # the run was started once, not once per process
    for f in ('config.yaml', 'metrics.json', 'predictions_dev.csv', 'submission.csv'):
        assert (run/f).is_file(), f
    assert not list(run.rglob('*.tmp'))  # no half-written file left by a racing process
    ix = pd.read_csv(runs_dir/'index.csv')
    assert ix['run_id'].tolist() == [run.name] and ix['status'].tolist() == ['completed']
    dev = pd.read_csv(run/'predictions_dev.csv', keep_default_na=False)
    assert len(dev) == 8 and dev['fname'].tolist() == [f'dev_{i}' for i in range(8)]  # every row once, in order
    assert submission_problems(run/'submission.csv', pd.read_csv(run/'data'/'test.csv')['fname'].tolist()) == []
    assert find_checkpoint(run).path == run/md['best_checkpoint']
    return run, md


def test_accelerate_configs_parse():
    "The shipped accelerate configs load with accelerate's own reader, with the engines they name."
    from accelerate.commands.config.config_args import load_config_from_file
    kinds = {f: str(load_config_from_file(str(ACCELERATE/f'{f}.yaml')).distributed_type).rsplit('.', 1)[-1]
             for f in ('ddp_cpu', 'deepspeed_zero2', 'fsdp')}
    assert kinds == {'ddp_cpu': 'MULTI_GPU', 'deepspeed_zero2': 'DEEPSPEED', 'fsdp': 'FSDP'}
    assert load_config_from_file(str(ACCELERATE/'deepspeed_zero2.yaml')).deepspeed_config['zero_stage'] == 2
    assert load_config_from_file(str(ACCELERATE/'fsdp.yaml')).fsdp_config['fsdp_state_dict_type'] == 'FULL_STATE_DICT'


@pytest.mark.slow
def test_ddp_two_cpu_processes_one_set_of_records(tmp_path):
    "DDP over gloo with 2 processes: the run completes and its folder, records and index row exist once."
    p = launch('--config_file', ACCELERATE/'ddp_cpu.yaml', '-m', 'dialsum.pipeline', 'configs/experiments/smoke.yaml',
               f'output.runs_dir={tmp_path}')
    assert p.returncode == 0, p.stderr[-4000:]
    run, md = check_one_record(tmp_path, processes=2)
    assert md['distributed_type'] == 'MULTI_CPU'
    assert p.stdout.count('completed ') == 1  # only the main process reports


@pytest.mark.slow
def test_accelerate_cpu_flag_single_process_path(tmp_path):
    "`accelerate launch --num_processes 2 --cpu`, as accelerate documents it, runs ONE process here (its multi-CPU mode needs mpirun), "
    "so this checks the single-process path under the launcher, not DDP: one process cannot write records twice. "
    "The 2-process tests (plain launch and sweep) are the proof that only the main process writes."
    p = launch('--num_processes', 2, '--cpu', '-m', 'dialsum.pipeline', 'configs/experiments/smoke.yaml', f'output.runs_dir={tmp_path}')
    assert p.returncode == 0, p.stderr[-4000:]
    check_one_record(tmp_path, processes=1)


def test_notebook_runner_refuses_to_run_per_process(tmp_path):
    "`dialsum run` under a launcher (WORLD_SIZE > 1) would make one notebook and run folder per process: it refuses, naming the script path."
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'WORLD_SIZE': '2'}
    p = subprocess.run([str(BIN/'dialsum'), 'run', 'configs/experiments/smoke.yaml', f'output.runs_dir={tmp_path}'], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 2 and '-m dialsum.pipeline' in p.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_sweep_through_accelerate_two_processes(tmp_path):
    "`dialsum sweep smoke.yaml --accelerate-config ddp_cpu.yaml --num-processes 2`: one run folder, one index row, completed, "
    "a valid promoted submission, the launcher's output in run.log, summarized like a papermill run."
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'TOKENIZERS_PARALLELISM': 'false', 'OMP_NUM_THREADS': '1'}
    p = subprocess.run([str(BIN/'dialsum'), 'sweep', 'configs/experiments/smoke.yaml', '--accelerate-config', ACCELERATE/'ddp_cpu.yaml',
                        '--num-processes', '2', '--set', f'output.runs_dir={tmp_path}'], cwd=ROOT, capture_output=True, text=True,
                       timeout=900, env=env)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    run, md = check_one_record(tmp_path, processes=2)
    assert md['distributed_type'] == 'MULTI_CPU' and md['submission_valid'] is True and md['promoted'] is True
    assert md['launcher'] == dict(accelerate_config='configs/accelerate/ddp_cpu.yaml', num_processes=2, exit_code=0)
    assert (tmp_path/'latest_submission.csv').read_bytes() == (run/'submission.csv').read_bytes()
    assert [h.name for h in (tmp_path/'history').iterdir()] == [f'{run.name}.csv']
    assert 'submission promoted' in (run/'run.log').read_text() and not (run/'run.ipynb').exists()
    row = next(l for l in p.stdout.splitlines() if l.startswith('smoke.yaml'))
    assert row.split()[:4] == ['smoke.yaml', 'smoke', run.name, 'completed'] and row.split()[6] == 'yes', p.stdout[-2000:]
