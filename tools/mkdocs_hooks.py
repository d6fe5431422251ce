"""mkdocs hooks of the docs site (see tools/mkdocs.yml): the table of contents points at the headings' real ids.

mkdocs-jupyter takes a notebook page's table of contents from Python-Markdown, but nbconvert renders the
headings, and the two make different ids for a heading with code in it (Python-Markdown leaves the code out):
such an entry would point at an anchor that is not on the page. Entries and headings come in the same order,
so each such entry is matched to the next heading whose text, without its code, is the entry's text.
"""
import re
from html import unescape

_HEADING = re.compile(r'<h([1-6])\b[^>]*\bid="([^"]+)"[^>]*>(.*?)</h\1>', re.S)

def _key(text:str)->str: return re.sub(r'\W+', '', unescape(re.sub(r'<[^>]+>', '', text)).replace('¶', '')).lower()


def on_page_content(html, page, config, files):
    "Point every table-of-contents entry whose anchor is not on the page at its heading."
    heads = [(m[2], {_key(m[3]), _key(re.sub(r'<code>.*?</code>', '', m[3], flags=re.S))}) for m in _HEADING.finditer(html)]
    where = {i: n for n, (i, _) in enumerate(heads)}
    at = 0
    def fix(items):
        nonlocal at
        for it in items:
            if it.id in where: at = where[it.id]
            else:
                k = _key(it.title)
                n = next((n for n in range(at, len(heads)) if k in heads[n][1]), None)
                if n is not None: it.id, at = heads[n][0], n
            fix(it.children)
    fix(page.toc or [])
    return html
