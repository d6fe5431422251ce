"""Helpers of the reliability and security tests: folder snapshots, a runs/ folder as a teammate left it,
and the log of cases that `tools/cases_page.py` turns into `nbs/reliability.md`."""
import hashlib, json, os, re
from pathlib import Path

import pandas as pd

from conftest import ROOT

CASES_OUT = 'DIALSUM_CASES_OUT'  # tools/cases_page.py sets this to a JSON-lines file
OLD_RUN = 'old_20260101-000000'
OLD_SUBMISSION = 'fname,summary\ntest_0,#Person1#이 인사한다.\ntest_1,#Person2#가 길을 묻는다.\n'


def snapshot(folder):
    "`{relative path: sha256}` of every file under `folder` (lock files left out: filelock may remove them)."
    folder = Path(folder)
    if not folder.exists(): return {}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file() and not p.name.endswith('.lock')}


def prior_runs(runs):
    "A runs folder as a teammate left it: one completed run, its promoted submission in history/ and latest, the index."
    from dialsum.submissions import update_index
    runs = Path(runs); run = runs/OLD_RUN
    run.mkdir(parents=True)
    (run/'metadata.json').write_text(json.dumps({'run_id': OLD_RUN, 'experiment': 'old', 'status': 'completed',
                                                 'started': '2026-01-01T00:00:00+00:00', 'promoted': True}))
    for p in (run/'submission.csv', runs/'history'/f'{OLD_RUN}.csv', runs/'latest_submission.csv'):
        p.parent.mkdir(exist_ok=True); p.write_text(OLD_SUBMISSION, encoding='utf-8')
    update_index(runs, dict(run_id=OLD_RUN, experiment='old', status='completed', dev_score=30.5, submission='submission.csv'))
    return runs


def assert_kept(runs, before):
    "Every file of `before` (a `snapshot` of `runs`) is still there, unchanged; the index may only have gained rows."
    runs, after = Path(runs), snapshot(runs)
    lost = sorted(set(before) - set(after))
    assert not lost, f"files lost: {lost}"
    changed = [k for k in before if after[k] != before[k] and k != 'index.csv']
    assert not changed, f"files changed: {changed}"
    if 'index.csv' in before and after['index.csv'] != before['index.csv']:
        ix = pd.read_csv(runs/'index.csv', dtype=str, keep_default_na=False)
        old = ix[ix.run_id == OLD_RUN]
        assert len(old) == 1 and old.dev_score.iat[0] == '30.5', 'the old run lost its index row'
    assert (runs/'latest_submission.csv').read_text(encoding='utf-8') == OLD_SUBMISSION, 'latest_submission.csv changed'
    assert not [p for p in runs.rglob('*.tmp')], 'a temporary file was left behind'


def tidy(text, *paths):
    "`text` with temporary and project paths shortened, for the docs page."
    text = str(text)
    for p in paths: text = text.replace(str(Path(p).resolve()), '<tmp>').replace(str(p), '<tmp>')
    text = text.replace(str(ROOT), '<project>')
    return re.sub(r'/tmp/[\w./-]*?/(pytest-\d+|tmp\w+)/[\w.-]+', '<tmp>', text)


def record(case, category, given, expected, outcome, message='', *paths):
    "Log one case for the docs page (when tools/cases_page.py asked for it)."
    out = os.environ.get(CASES_OUT)
    if not out: return
    node = os.environ.get('PYTEST_CURRENT_TEST', '').rsplit(' ', 1)[0]  # tests/test_x.py::test_y[id] (call)
    test = f"{Path(node.split('::')[0]).stem}::{node.split('::', 1)[-1]}" if '::' in node else ''
    row = dict(case=case, category=category, given=given, expected=expected, outcome=outcome,
               message=tidy(message, *paths).strip(), test=test)
    with open(out, 'a', encoding='utf-8') as f: f.write(json.dumps(row, ensure_ascii=False) + '\n')
