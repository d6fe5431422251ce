"""nbs/reliability.md is current: generated from the reliability tests as they are now, and what this session's run of
them logged (their cases and outcomes) writes the same page, numbers aside."""
import difflib, json, os, re, subprocess, sys

import pytest
from conftest import BIN, CASES_OUT, OUTCOMES, ROOT, case_key

sys.path.insert(0, str(ROOT/'tools'))
import cases_page

REGENERATE = '.venv/bin/python tools/cases_page.py'
PAGE = ROOT/'nbs'/'reliability.md'


def test_reliability_page_is_current():
    "nbs/reliability.md was generated from the reliability tests as they are now, and lists every one of them."
    text = PAGE.read_text(encoding='utf-8')
    stamp, now = cases_page.stamp_of(text), cases_page.fingerprint()
    changed = sorted(f for f in now if stamp.get(f) != now[f])
    assert not changed, f"nbs/reliability.md is older than {changed}: regenerate it with `{REGENERATE}`"
    r = subprocess.run([str(BIN/'python'), '-m', 'pytest', '--collect-only', '-q', '-p', 'no:cacheprovider', *cases_page.FILES],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    n = int(re.search(r'(\d+) tests? collected', r.stdout)[1])
    assert re.search(rf'Tests run: {n}, passed: {n}\.', text), f"nbs/reliability.md does not say all {n} tests ran and passed: `{REGENERATE}`"


def test_reliability_page_matches_this_session(request, tmp_path):
    "The cases the reliability tests logged in this session (conftest.py runs this test after them) and their outcomes "
    "make the page as committed, but for the numbers that change from run to run."
    stems = {f.split('/')[-1][:-3] for f in cases_page.FILES}
    mine = [case_key(i.nodeid) for i in request.session.items if i.path.stem in stems]
    ran = {k: OUTCOMES[k] for k in mine if k in OUTCOMES}
    if len(ran) < len(mine) or len(mine) < int(re.search(r'Tests run: (\d+)', PAGE.read_text(encoding='utf-8'))[1]):
        pytest.skip(f"this session ran {len(ran)} of the reliability tests (all of {', '.join(cases_page.FILES)} make the page)")
    log = open(os.environ[CASES_OUT], encoding='utf-8').read().splitlines()
    rows, seen = [], set()
    for r in map(json.loads, log):  # one row per case, as tools/cases_page.py keeps them
        if r['test'].split('::')[0] in stems and r['case'] not in seen: seen.add(r['case']); rows.append(r)
    digits = lambda s: re.sub(r'\d+', '0', s).splitlines()  # run ids with their time, free disk, kills landing inside a write
    page = cases_page.page(rows, ran)
    diff = list(difflib.unified_diff(digits(PAGE.read_text(encoding='utf-8')), digits(page), 'committed', 'this session',
                                     lineterm='', n=0))
    (tmp_path/'reliability.md').write_text(page, encoding='utf-8')
    assert not diff, (f"nbs/reliability.md is not what this session's reliability tests write (that page: "
                      f"{tmp_path/'reliability.md'}; or `{REGENERATE}`)\n" + '\n'.join(diff[:40]))
