"""The docs site: the show_doc-only build (what nbdev_docs runs) passes strictly; and, in a real browser, every page
reachable from the navigation loads, links and pictures work, no console error, no traceback."""
import functools, importlib, json, re, shutil, subprocess, sys, threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urldefrag, urlparse

import pytest
from conftest import BIN, ROOT

sys.path.insert(0, str(ROOT/'tools'))

slow = pytest.mark.slow  # builds the whole site and drives Chromium: minutes
MODULE_NBS = []


def test_show_doc_build_is_strict(tmp_path, monkeypatch):
    "Every notebook processed as nbdev_docs processes it (running only the cells show_doc needs: imports, exports, show_doc), in one process as nbdev does: none raises."
    from docs import _page_names, build_page, notebooks
    monkeypatch.chdir(ROOT); monkeypatch.setenv('IN_TEST', '1')  # build_page sets it, as nbdev_test does
    nbs = ROOT/'nbs'
    pages, failed = _page_names(nbs, notebooks(nbs)), {}
    for nb in notebooks(nbs):
        try: build_page(nb, tmp_path, pages, execute=False, strict=True)
        except Exception as e: failed[str(nb.relative_to(nbs))] = str(e).splitlines()[0]
    # a cell holding an import and test code is run by nbdev's exec_show_docs: a name it uses from a cell that is not run
    # breaks the build (the fix: the import goes into the notebook's import cell, or the cell gets `#| eval: false`)
    assert not failed, "notebooks whose show_doc cells raise (nbdev_docs would fail):\n" + '\n'.join(f"{k}: {v}" for k, v in failed.items())
    assert len(list(tmp_path.rglob('*.ipynb'))) == len(pages) - len(failed)


def _module_nb(module):
    "The notebook in nbs/ that exports `dialsum.<module>` (found by its `default_exp`, whatever its number)."
    return next(p for p in sorted((ROOT/'nbs').glob('[0-9]*.ipynb'))
                if re.search(rf'#\|\s*default_exp\s+{module}\b', p.read_text(encoding='utf-8')))


NOISE = re.compile(r'Loading weights|Writing model shards|site-packages')  # tqdm bars of transformers, library warnings


def _noisy(text):
    "Whether `text` (an output or a page) shows a progress bar or a warning raised inside an installed package."
    from docs import PROGRESS
    return bool(PROGRESS.search(text) or NOISE.search(text))


@slow
def test_pages_without_progress_bars(tmp_path, monkeypatch):
    "A page whose lessons save and load models shows their values and dialsum's messages, no bar or library warning."
    from docs import _page_names, build_page, notebooks, quiet_stderr
    kept = 'warning: dialsum keeps this\n'
    bar = '\rLoading weights:   0%|          | 0/50 [00:00<?, ?it/s]\rLoading weights: 100%|##########| 50/50 [00:00]\n'
    lib = '/venv/lib/python3.11/site-packages/transformers/x.py:33: FutureWarning: deprecated\n  warnings.warn(\n'
    cleared = '\r                                     \r\x1b[A\r                    \r\n'  # a finished bar, erased
    assert quiet_stderr(kept + bar + lib + cleared + '12it [00:01, 3.40it/s]\n') == kept
    monkeypatch.chdir(ROOT); monkeypatch.setenv('IN_TEST', '1')
    nbs, src = ROOT/'nbs', _module_nb('lora')  # its lessons save and load tiny models: both kinds of bar, and warnings
    page, _ = build_page(src, tmp_path, _page_names(nbs, notebooks(nbs)), execute=True, strict=True)
    outs = [o for c in json.loads((tmp_path/page).read_text(encoding='utf-8'))['cells'] for o in c.get('outputs', [])]
    text = lambda o: ''.join(o.get('text', '')) + ''.join(''.join(v) for v in o.get('data', {}).values()
                                                          if isinstance(v, (str, list)))
    noise = [text(o)[:200] for o in outs if _noisy(text(o))]
    assert not noise, f"{src.name}: progress bars or library warnings on the page:\n" + '\n'.join(noise)
    values = sum(o['output_type'] == 'execute_result' for o in outs)
    assert values >= 5, f"{src.name}: {values} lesson values on the page"


FLAGS = ['--headless=new', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync', '--window-size=1280,1400']


def _browser():
    "Paths of Debian's chromium and chromedriver, installed with `make browser` when missing; a skip when that fails."
    have = lambda: shutil.which('chromium') and shutil.which('chromedriver')
    if not have():
        r = subprocess.run(['make', '-s', 'browser'], cwd=ROOT, capture_output=True, text=True, timeout=900)
        if not have(): pytest.skip(f"Chromium and ChromeDriver are not installed and `make browser` could not install them: "
                                   f"{(r.stderr or r.stdout).strip()[-300:]}")
    return shutil.which('chromium'), shutil.which('chromedriver')


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    "The site built by tools/docs.py (what `make docs` runs without quarto) into a temporary folder."
    tmp = tmp_path_factory.mktemp('docs')
    MODULE_NBS[:] = sorted((ROOT/'nbs').glob('[0-9]*.ipynb'))  # the module notebooks this build sees
    # `make docs` runs every notebook's lessons; nbdev_test checks those, so here only the pages with pictures run
    # (the others get what show_doc needs, as nbdev_docs does): the same pipeline in a third of the time
    r = subprocess.run([str(BIN/'python'), 'tools/docs.py', '--out', str(tmp/'site'), '--build', str(tmp/'build'),
                        '--execute', 'eda.ipynb', '14_plots.ipynb', 'tutorials/03_sweep.ipynb'],
                       cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, f"tools/docs.py failed:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    # a cell that raised is a warning naming its notebook: none may
    raised = {m[1] for m in re.finditer(r'^warning: .*?/nbs/(\S+?\.ipynb): cell \d+ raised', r.stderr, re.M)}
    assert not raised, f"cells raised while building the site:\n{r.stderr[-4000:]}"
    return tmp/'site'


@pytest.fixture(scope='module')
def server(site):
    "The site served on localhost; every request's path and status are recorded."
    log = []
    class Handler(SimpleHTTPRequestHandler):
        def log_request(self, code='-', size='-'): log.append((urlparse(self.path).path, int(code)))
        def log_message(self, *a): pass
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Handler, directory=str(site)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", log
    httpd.shutdown(); httpd.server_close()


@pytest.fixture(scope='module')
def driver(tmp_path_factory):
    chromium, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for f in FLAGS + [f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"]: opts.add_argument(f)
    opts.set_capability('goog:loggingPrefs', {'browser': 'ALL'})
    d = webdriver.Chrome(service=Service(chromedriver), options=opts)
    d.set_page_load_timeout(60)
    yield d
    d.quit()


JS_PAGE = """return {links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
  ids: Array.from(document.querySelectorAll('[id]')).map(e => e.id),
  broken_images: Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src.slice(0, 100)),
  images: document.querySelectorAll('article img').length,
  highlighted: document.querySelectorAll('article .highlight-ipynb span, article .highlight span').length,
  article_links: Array.from(document.querySelectorAll('article a[href]')).map(a => a.href),
  text: document.querySelector('article') ? document.querySelector('article').innerText : '',
  scrolled_code: Array.from(document.querySelectorAll('article pre')).filter(p => p.scrollWidth > p.clientWidth + 1)
    .map(p => Math.max(...p.innerText.split('\\n').map(l => l.length)))}"""


@pytest.fixture(scope='module')
def crawl(server, driver, tmp_path_factory):
    "Every page reachable from the home page by its links, visited in the browser: what each page holds, and console errors."
    base, log = server
    pages, errors, todo = {}, [], ['/index.html']
    while todo:
        path = todo.pop()
        if path in pages: continue
        driver.get(base + path)
        info = driver.execute_script(JS_PAGE)
        errors += [(path, e['message']) for e in driver.get_log('browser') if e['level'] == 'SEVERE']
        pages[path] = info
        for href in info['links']:
            u = urlparse(href)
            if u.netloc == urlparse(base).netloc and u.path.endswith('.html') and u.path not in pages: todo.append(u.path)
    return pages, errors


@slow
def test_every_page_loads_without_errors(site, server, crawl):
    base, log = server
    pages, errors = crawl
    built = {'/' + str(p.relative_to(site)) for p in site.rglob('*.html') if p.name != '404.html'}
    assert built - set(pages) == set(), 'pages that no link or navigation entry reaches'
    assert {'/index.html', '/plots.html', '/eda.html', '/tutorials/quick_start.html', '/reliability.html'} <= set(pages)
    failed = [(p, s) for p, s in log if s not in (200, 304)]  # 304: the browser's cached copy is still good
    assert not failed, f"requests (pages, styles, scripts, pictures) that failed: {failed}"
    assert all(s == 200 for p, s in log if p in pages)
    assert not errors, 'console errors:\n' + '\n'.join(map(str, errors))
    shown = [p for p, i in pages.items() if 'Traceback (most recent call last)' in i['text'] or re.search(r'^\w*Error\s+Traceback', i['text'], re.M)]
    assert not shown, f"pages that show a Python traceback: {sorted(shown)}"
    noisy = [p for p, i in pages.items() if _noisy(i['text'])]
    assert not noisy, f"pages that show progress bars or library warnings: {sorted(noisy)}"


@slow
def test_code_fits_the_page(crawl):
    "In a 1280-pixel window, a code block of lines up to 120 characters (the notebooks' limit) never scrolls sideways."
    pages, _ = crawl
    scrolled = {p: n for p, i in pages.items() if (n := sorted(n for n in i['scrolled_code'] if n <= 120))}
    assert not scrolled, f"pages whose code of at most 120 characters a line does not fit (longest lines): {scrolled}"


@slow
def test_reliability_page(server, crawl):
    "The cases page is linked from the home page's text, has its tables, and shows the shortened paths as text (not as HTML tags)."
    base, _ = server
    pages, _ = crawl
    assert base + '/reliability.html' in pages['/index.html']['article_links']
    text = pages['/reliability.html']['text']
    assert text.startswith('Reliability: bad inputs, faults and untrusted files')
    assert re.search(r'Tests run: \d+, passed: \d+', text) and '<tmp>/data/train.csv' in text


@slow
def test_no_broken_internal_link(server, crawl):
    base, _ = server
    pages, _ = crawl
    broken = []
    for path, info in pages.items():
        for href in info['links']:
            url, frag = urldefrag(href)
            u = urlparse(url)
            if u.netloc != urlparse(base).netloc: continue
            target = u.path + ('index.html' if u.path.endswith('/') else '')
            if target.endswith('.html'):
                if target not in pages: broken.append((path, href, 'page not reached')); continue
                if frag and unquote(frag) not in pages[target]['ids']: broken.append((path, href, 'no such anchor'))
            else:
                import urllib.request
                with urllib.request.urlopen(url) as r:
                    if r.status != 200: broken.append((path, href, r.status))
    assert not broken, 'broken links:\n' + '\n'.join(map(str, broken))


@slow
def test_pictures_code_and_api(crawl):
    pages, _ = crawl
    assert [(p, i['broken_images']) for p, i in pages.items() if i['broken_images']] == []
    assert pages['/eda.html']['images'] >= 4 and pages['/plots.html']['images'] >= 3  # the lessons' pictures are shown
    assert pages['/plots.html']['highlighted'] > 50 and pages['/data.html']['highlighted'] > 50  # code is highlighted
    from nbdev.frontmatter import _nbpath2html
    from mkdocs_jupyter.utils import slugify
    checked = 0
    for nb in MODULE_NBS:
        m = re.search(r'#\|\s*default_exp\s+(\S+)', ''.join(json.loads(nb.read_text())['cells'][0]['source']))
        if not m: continue
        assert '/' + _nbpath2html(nb).name in pages, f'{nb.name}: no page'
        mod, page = importlib.import_module(f'dialsum.{m[1]}'), pages['/' + _nbpath2html(nb).name]
        text = ' '.join(page['text'].split())
        for name in getattr(mod, '__all__', []):
            obj = getattr(mod, name)
            if not callable(obj) or not getattr(obj, '__doc__', None) or getattr(obj, '__module__', '') != mod.__name__: continue
            assert slugify(name) in page['ids'], f'{nb.name}: no section for {name}'
            assert re.search(rf'(def|class) {re.escape(name)}\b', text), f'{nb.name}: no signature of {name}'
            doc = ' '.join(obj.__doc__.split()).replace('`', '')
            assert doc[:60] in text, f'{nb.name}: no docstring of {name}'
            checked += 1
    assert checked > 30


@slow
def test_screenshots(server, driver, crawl, tmp_path):
    base, _ = server
    for name, path in [('home', '/index.html'), ('api', '/plots.html')]:
        driver.get(base + path)
        assert driver.save_screenshot(str(tmp_path/f'{name}.png'))
        assert (tmp_path/f'{name}.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    print(f"screenshots: {tmp_path}")
