"`dialsum tune` against a real PostgreSQL server that the test starts: the shared storage workers on several machines use."
import json, os, pwd, shutil, socket, subprocess, tempfile
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import ROOT, SMOKE, dialsum, run_folders
from dialsum.submissions import read_index

SPACE = 'training.learning_rate: {low: 1.0e-4, high: 1.0e-2, log: true}\n'


def _pg_bin():
    "The folder holding Debian's initdb and pg_ctl (/usr/lib/postgresql/<ver>/bin, newest first, else PATH), or None."
    on_path = shutil.which('pg_ctl')
    dirs = [*sorted(Path('/usr/lib/postgresql').glob('*/bin'), reverse=True), *([Path(on_path).resolve().parent] if on_path else [])]
    return next((d for d in dirs if (d/'initdb').exists() and (d/'pg_ctl').exists()), None)


def _free_port():
    "A TCP port on 127.0.0.1 nothing listens on now."
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='session')
def postgres():
    "A throwaway PostgreSQL server (trust auth, 127.0.0.1 only, its socket in a tmp dir): its SQLAlchemy URL; stopped at the end."
    bin_ = _pg_bin()
    if bin_ is None:
        r = subprocess.run(['make', '-s', 'postgres'], cwd=ROOT, capture_output=True, text=True, timeout=900)
        if (bin_ := _pg_bin()) is None:
            pytest.skip(f"PostgreSQL's initdb and pg_ctl are not installed and `make postgres` could not install them: "
                        f"{(r.stderr or r.stdout).strip()[-300:]}")
    # postgres refuses to run as root: then initdb and pg_ctl run as the `postgres` user Debian's package creates
    as_user = ['runuser', '-u', 'postgres', '--'] if os.geteuid() == 0 else []
    if as_user:
        try: pwd.getpwnam('postgres')
        except KeyError: pytest.skip("running as root, and there is no `postgres` user to run the server as (Debian's package makes it)")
    d = Path(tempfile.mkdtemp(prefix='dialsum-pg-'))  # under /tmp, not pytest's root-only tmp: the postgres user enters it
    if as_user: shutil.chown(d, 'postgres', 'postgres')
    data, log, port = d/'data', d/'server.log', _free_port()
    pg = lambda *a, **kw: subprocess.run([*as_user, *map(str, a)], capture_output=True, text=True, timeout=120, **kw)
    r = pg(bin_/'initdb', '-D', data, '-U', 'postgres', '--auth=trust', '--no-sync')
    if r.returncode == 0:
        r = pg(bin_/'pg_ctl', '-D', data, '-l', log, '-w', '-t', '60', '-o',
               f"-p {port} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off", 'start')
    try:
        if r.returncode != 0:
            why = (r.stderr or r.stdout).strip()[-300:] + (' | server log: ' + log.read_text()[-300:] if log.exists() else '')
            pytest.skip(f"PostgreSQL ({bin_}) is installed but a throwaway server could not be started: {why}")
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg(bin_/'pg_ctl', '-D', data, '-m', 'fast', '-w', 'stop')
        shutil.rmtree(d, ignore_errors=True)


@pytest.mark.slow  # two smoke trials by two workers at once, then a rerun that adds none
def test_two_workers_share_a_study_on_postgres(postgres, tmp_path):
    "Two workers, one PostgreSQL study of 2 trials: distinct trials, each valued at its run's dev score, one index row each; a rerun adds none."
    (tmp_path/'space.yaml').write_text(SPACE)
    runs = tmp_path/'runs'
    args = [SMOKE, '--space', tmp_path/'space.yaml', '--trials', 2, '--storage', postgres, '--study', 'pg',
            '--set', f"output.runs_dir={runs}"]
    first = dialsum('tune', *args, '--workers', 2)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert '2 workers' in first.stdout
    st = optuna.load_study(study_name='pg', storage=postgres)
    assert [(t.number, t.state) for t in st.trials] == [(0, TrialState.COMPLETE), (1, TrialState.COMPLETE)]  # no overshoot
    assert len({t.params['training.learning_rate'] for t in st.trials}) == 2  # two trials, not one trial run twice
    a, b = st.trials
    assert a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete  # run at once, one per worker
    ix = read_index(runs)
    assert len(pd.read_csv(runs/'index.csv')) == 2
    assert sorted(ix.run_id) == sorted(f.name for f in run_folders(runs)) == sorted(t.user_attrs['run_id'] for t in st.trials)
    for t in st.trials:
        md = json.loads((runs/t.user_attrs['run_id']/'metadata.json').read_text(encoding='utf-8'))
        assert (md['status'], md['study'], md['trial'], md['params']) == ('completed', 'pg', t.number, t.params)
        assert t.value == pytest.approx(md['dev']['score'])  # the objective stored in PostgreSQL is the run's dev score
    again = dialsum('tune', *args)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "study 'pg'" in again.stdout and '2 of 2 trials' in again.stdout  # resumed from the server's record
    assert len(optuna.load_study(study_name='pg', storage=postgres).trials) == 2 and len(run_folders(runs)) == 2
    assert len(pd.read_csv(runs/'index.csv')) == 2
