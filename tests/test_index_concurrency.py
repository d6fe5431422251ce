"Two separate Python processes writing the run index at once: the lock and the atomic write keep every row."
import subprocess, sys, time

import pandas as pd

from dialsum.submissions import INDEX_COLUMNS, read_index

N = 50
CHILD = '''
import sys, time
from pathlib import Path
from dialsum.submissions import update_index
runs, tag, go, n = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
(go.parent/f'ready-{tag}').touch()
deadline = time.time() + 60
while not go.exists():
    if time.time() > deadline: sys.exit('the start signal never came')
    time.sleep(0.005)
for i in range(n):
    update_index(runs, dict(run_id=f'{tag}-{i:02d}', experiment=tag, status='completed', dev_score=i))
'''


def test_two_processes_lose_no_rows(tmp_path):
    "2 processes x 50 `update_index` calls with distinct run ids give 100 rows, one schema, a file that parses."
    runs, go = tmp_path/'runs', tmp_path/'go'
    procs = [subprocess.Popen([sys.executable, '-c', CHILD, str(runs), tag, str(go), str(N)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in ('p1', 'p2')]
    deadline = time.time() + 60  # both import dialsum first, so that they start writing together
    while not all((tmp_path/f'ready-{t}').exists() for t in ('p1', 'p2')) and time.time() < deadline: time.sleep(0.005)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    ix = read_index(runs)
    assert ix.columns.tolist() == INDEX_COLUMNS
    assert sorted(ix.run_id) == sorted(f'{t}-{i:02d}' for t in ('p1', 'p2') for i in range(N))
    assert ix.dev_score.sum() == 2 * sum(range(N))
    raw = pd.read_csv(runs/'index.csv', dtype=str, keep_default_na=False)
    assert len(raw) == 2 * N and raw.run_id.is_unique
    assert not [p.name for p in runs.iterdir() if p.name.endswith('.tmp')]
