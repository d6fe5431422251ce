"""Build the docs site (`make docs`): `nbdev_docs` when quarto is installed, else nbdev's processing and mkdocs.

Without quarto, every notebook in nbs/ and nbs/tutorials/ becomes a page:
1. it is executed the way `nbdev_test` runs it (cells flagged with a test flag such as `slow` and
   `#| eval: false` cells are skipped), so lessons show their outputs and pictures; the experiment
   template is not executed (that would be a training run) and is shown as it is. A cell that raises
   keeps its error on the page and the build goes on with a warning (`--strict`: the build fails);
   `nbdev_test` is what checks the lessons. `--no-execute` runs only what `show_doc` needs, as
   `nbdev_docs` does, and `--execute NB ...` runs only the lessons of those notebooks;
2. nbdev's own processors run on it, as `nbdev_docs` would (front matter from the title cell, a
   `show_doc` for every exported name, `#| hide` and `#| export` cells dropped, backticked names linked);
3. what quarto would read from the result is turned into what mkdocs-jupyter reads: the front matter
   becomes the page's title cell, quarto's `#| echo: false` / `output: false` / `include: false`
   become cell tags that remove the input / outputs / cell, and doc links become relative links between
   pages named as quarto names them (`01_data.ipynb` -> `data.html`);
4. mkdocs (material theme, mkdocs-jupyter plugin; settings in tools/mkdocs.yml) builds the site.

    python tools/docs.py [--out _docs] [--no-execute | --execute NB ...] [--strict] [--workers 2]
"""
from __future__ import annotations
import argparse, json, os, re, shutil, subprocess, sys, time, traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT/'_proc'/'mkdocs'
NO_EXEC = {'run_experiment.ipynb'}  # the experiment template: executing it is a training run into runs/
SECTIONS = [('Home', lambda p: p.name == 'index.ipynb'), ('Tutorials', lambda p: p.parent.name == 'tutorials'),
            ('Guides', lambda p: not re.match(r'\d', p.name) and p.name != 'run_experiment.ipynb'),
            ('API', lambda p: bool(re.match(r'\d', p.name))), ('Experiment template', lambda p: True)]
TAGS = {'echo': ('false', 'remove_input'), 'output': ('false', 'remove_output'), 'include': ('false', 'remove_cell')}


def notebooks(nbs:Path)->list[Path]:
    "The notebooks that become pages: nbs/*.ipynb and nbs/tutorials/*.ipynb, nothing hidden or private."
    found = sorted(nbs.glob('*.ipynb')) + sorted((nbs/'tutorials').glob('*.ipynb'))
    return [p for p in found if not p.name.startswith(('_', '.'))]


def _exec_proc(full:bool, skip_flags:set, strict:bool):
    "nbdev's `exec_show_docs`, extended to run every cell that `nbdev_test` runs when `full`, keeping the outputs."
    from nbdev.processors import _do_eval, exec_show_docs

    class exec_cells(exec_show_docs):
        def __call__(self, cell):
            if not hasattr(self, 'k'): return
            if full:  # what nbdev_test runs
                d = getattr(cell, 'directives_', {}) or {}
                if cell.cell_type != 'code' or 'nbdev_export(' in cell.source or d.get('eval:', [''])[0].lower() == 'false' or skip_flags & set(d): return
            else:  # what nbdev's exec_show_docs runs
                fm = getattr(self.nb, 'frontmatter_', {}) or {}
                if not self.nb.has_docs_ or str(fm.get('skip_showdoc', '')).lower() == 'true' or not _do_eval(cell): return
            self.k.cell(cell)
            if self.k.exc:
                msg = f"{self.nb.path_}: cell {cell.idx_} raised {type(self.k.exc).__name__}: {self.k.exc}"
                if strict: raise RuntimeError(msg + f"\n{cell.source}\n\n" + ''.join(traceback.format_exception(self.k.exc)))
                print(f"warning: {msg} (the page shows the error)", file=sys.stderr)
                self.k.exc = None
    return exec_cells


def _directives(cell)->dict:
    "Quarto cell options left in the source by nbdev's processors (`#| echo: false`), removed from the source."
    from nbdev.process import extract_directives
    return {k.rstrip(':'): (v[0] if v else '') for k, v in extract_directives(cell, remove=True).items()}


def _link_fixer(page:Path, src_dir:str, pages:dict, doc_url:str):
    "A function that makes links in `page` relative: doc-site URLs and links to notebooks become links to pages."
    from mkdocs_jupyter.utils import slugify  # the plugin's heading ids: lower case, no dots
    def rel(target:str, anchor:str)->str:
        return (os.path.relpath(target, page.parent) if target else '') + (f"#{slugify(anchor)}" if anchor else '')
    def doc(m):
        path, _, anchor = m[1].partition('#')
        return rel(path, anchor) if path in ('', *pages.values()) else m[0]
    def nb(m):
        src = os.path.normpath(os.path.join(src_dir, m[1]))
        return f"]({rel(pages[src], m[2] or '')})" if src in pages else m[0]
    doc_re = re.compile(re.escape(doc_url) + r'([^)\s"\'<>]*)')
    nb_re = re.compile(r'\]\((?:\./)?([^)\s:#]+\.ipynb)(?:#([^)\s]*))?\)')
    attr_re = re.compile(r'\[([^\]]+)\]\(([^)\s]+)\)\{([^}]*)\}')  # quarto's [text](url){attrs}, e.g. show_doc's source link
    return lambda text: attr_re.sub(r'<a href="\2" \3>\1</a>', nb_re.sub(nb, doc_re.sub(doc, text)))


def build_page(src:Path, dst_root:Path, pages:dict, execute:bool, strict:bool=False)->tuple[str, str]:
    "Execute (if asked) and process the notebook `src` into a page under `dst_root`; return its page path and title."
    os.environ['IN_TEST'] = '1'
    from execnb.nbio import mk_cell, read_nb, write_nb
    from nbdev.config import get_config
    from nbdev.process import NBProcessor
    from nbdev.processors import FilterDefaults, exec_show_docs
    cfg = get_config()
    nbs = Path(cfg.nbs_path)
    page = Path(pages[str(src.relative_to(nbs))])
    full = execute and src.name not in NO_EXEC
    skip = set(cfg.get('tst_flags', '').split())
    procs = [_exec_proc(full, skip, strict) if p is exec_show_docs else p for p in FilterDefaults().procs()]
    nb = read_nb(src)
    cwd = os.getcwd()
    os.chdir(src.parent)  # as nbdev_test runs a notebook
    try: NBProcessor(nb=nb, procs=procs).process()
    finally: os.chdir(cwd)
    fm = getattr(nb, 'frontmatter_', {}) or {}
    title = str(fm.get('title') or page.stem)
    cells = [c for c in nb.cells if not (c.cell_type == 'raw' and c.source.lstrip().startswith('---'))]
    head = f"# {title}" + (f"\n\n> {fm['description']}" if fm.get('description') else '')
    base = cfg.doc_baseurl.strip('/')
    fix = _link_fixer(page, str(src.parent.relative_to(nbs)), pages, cfg.doc_host.rstrip('/') + '/' + (base + '/' if base else ''))
    for c in cells:
        c.source = fix(c.source)
        if c.cell_type != 'code': continue
        tags = list(c.metadata.get('tags', []))
        for k, v in _directives(c).items():
            if k in TAGS and v.lower() == TAGS[k][0]: tags.append(TAGS[k][1])
        if tags: c.metadata['tags'] = tags
        c.source = re.sub(r'\A(?:[ \t]*#\|.*\n?)+', '', c.source)
        for o in c.get('outputs', []):
            data = o.get('data', {})
            for mime in ('text/markdown', 'text/html'):
                if mime in data:
                    v = data[mime]
                    data[mime] = fix(''.join(v) if isinstance(v, list) else v)
    nb.cells = [mk_cell(head, 'markdown')] + cells
    out = dst_root/page.with_suffix('.ipynb')
    out.parent.mkdir(parents=True, exist_ok=True)
    write_nb(nb, out)
    return str(page.with_suffix('.ipynb')), title


def _page_names(nbs:Path, found:list)->dict:
    "Notebook (relative to nbs/) -> its page, named as quarto names it (`01_data.ipynb` -> `data.html`)."
    from nbdev.frontmatter import _nbpath2html
    pages = {str(p.relative_to(nbs)): str(p.parent.relative_to(nbs)/_nbpath2html(p).name) for p in found}
    if clash := [p for p in set(pages.values()) if list(pages.values()).count(p) > 1]:
        raise SystemExit(f"notebooks that would be the same page {clash}: " + ', '.join(s for s, p in pages.items() if p in clash))
    return pages


def _nav(built:list)->list:
    "mkdocs `nav`: each page in the first section that wants it, in file order."
    groups = {name: [] for name, _ in SECTIONS}
    for src, page, title in built: groups[next(n for n, want in SECTIONS if want(src))].append({title: page})
    return [{name: (next(iter(items[0].values())) if name == 'Home' else items)} for name, items in groups.items() if items]


def mkdocs_build(built:list, out:Path, cfg, build:Path)->Path:
    "Write the mkdocs config (tools/mkdocs.yml + pages) into the build folder and build the site into `out`."
    conf = yaml.safe_load((ROOT/'tools'/'mkdocs.yml').read_text(encoding='utf-8'))
    conf.update(site_name=cfg.title, site_description=cfg.description, docs_dir=str(build/'docs'), site_dir=str(out), nav=_nav(built),
                hooks=[str(ROOT/'tools'/p) for p in conf.get('hooks', [])])
    shutil.copy(ROOT/'tools'/'mkdocs_extra.css', build/'docs'/'extra.css')
    (build/'mkdocs.yml').write_text(yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), encoding='utf-8')
    subprocess.run([sys.executable, '-m', 'mkdocs', 'build', '--clean', '-q', '-f', str(build/'mkdocs.yml')], check=True, cwd=build,
                   env={**os.environ, 'NO_MKDOCS_2_WARNING': '1'})
    return out


def main(argv=None)->int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=None, help='site folder (default: doc_path in settings.ini, _docs)')
    ap.add_argument('--no-execute', action='store_true', help="don't run the lessons; only what show_doc needs (as nbdev_docs)")
    ap.add_argument('--execute', nargs='+', metavar='NB', help='run the lessons of only these notebooks (names relative to nbs/)')
    ap.add_argument('--strict', action='store_true', help='fail the build when a cell raises')
    ap.add_argument('--workers', type=int, default=2, help='notebooks processed at once')
    ap.add_argument('--only', nargs='*', help='build only these notebooks (names relative to nbs/), for a quick look')
    ap.add_argument('--build', default=str(BUILD), help='folder for the processed notebooks and the mkdocs config')
    ap.add_argument('--page', help=argparse.SUPPRESS)  # internal: build this one notebook's page into the build folder
    a = ap.parse_args(argv)
    os.chdir(ROOT)
    from nbdev.config import get_config
    from nbdev.doclinks import _build_modidx
    cfg = get_config()
    out = Path(a.out).resolve() if a.out else Path(cfg.doc_path)
    build = Path(a.build).resolve()
    nbs = Path(cfg.nbs_path)
    if a.page:
        print(json.dumps(build_page(Path(a.page).resolve(), build/'docs', _page_names(nbs, notebooks(nbs)), not a.no_execute, a.strict)))
        return 0
    found = [p for p in notebooks(nbs) if not a.only or str(p.relative_to(nbs)) in a.only]
    pages = _page_names(nbs, found)
    _build_modidx()  # doc links need an up-to-date index of the exported names
    shutil.rmtree(build, ignore_errors=True)
    (build/'docs').mkdir(parents=True)
    t0 = time.time()
    def one(p):  # each notebook in its own Python, as nbdev_test runs them
        run = not a.no_execute and (not a.execute or str(p.relative_to(nbs)) in a.execute)
        r = subprocess.run([sys.executable, __file__, '--page', str(p), '--build', str(build)] + ['--no-execute'] * (not run)
                           + ['--strict'] * a.strict, capture_output=True, text=True)
        if r.returncode: raise RuntimeError(r.stderr.strip()[-3000:])
        for l in r.stderr.splitlines():
            if l.startswith('warning: '): print(l, file=sys.stderr, flush=True)
        return json.loads(r.stdout.strip().splitlines()[-1])
    built, failed = [], []
    with ThreadPoolExecutor(max_workers=a.workers) as ex:
        for p, f in [(p, ex.submit(one, p)) for p in found]:
            try: built.append((p.relative_to(nbs), *f.result())); print(f"  {p.relative_to(ROOT)} -> {built[-1][1]}", flush=True)
            except Exception as e: failed.append(p); print(f"FAILED {p.relative_to(ROOT)}:\n{e}", file=sys.stderr, flush=True)
    if failed:
        print(f"docs not built: {len(failed)} notebook(s) failed: {', '.join(str(p.relative_to(ROOT)) for p in failed)}", file=sys.stderr)
        return 1
    mkdocs_build(built, out, cfg, build)
    print(f"site: {out}/index.html ({len(built)} pages, {time.time() - t0:.0f} s); serve it with: "
          f"python -m http.server -d {os.path.relpath(out)}")
    return 0


if __name__ == '__main__':
    sys.exit(main())
