"""Write README.md from nbs/index.ipynb: markdown cells as they are, code cells as Python blocks, hidden cells left out.
Links to other pages (`[text](reliability.md)`, relative to nbs/ as on the docs site) point into nbs/ from the README."""
import json, re, sys
from pathlib import Path

root = Path(__file__).resolve().parents[1]
nb = json.loads((root/'nbs'/'index.ipynb').read_text(encoding='utf-8'))
parts = []
for cell in nb['cells']:
    src = ''.join(cell['source'])
    lines = src.splitlines()
    if any(l.strip().startswith('#|') and 'hide' in l for l in lines): continue
    if cell['cell_type'] == 'markdown': parts.append(src.strip())
    elif cell['cell_type'] == 'code':
        code = '\n'.join(l for l in lines if not l.strip().startswith('#|')).strip()
        if code: parts.append(f"```python\n{code}\n```")
def _into_nbs(m):
    "A relative link to a file in nbs/, made relative to the project folder, where README.md is."
    return f"]({'nbs/' + m[1]}{m[2] or ''})" if (root/'nbs'/m[1]).is_file() else m[0]
out = re.sub(r'\]\((?![a-z]+:|/|#)([^)\s#]+)(#[^)\s]*)?\)', _into_nbs, '\n\n'.join(parts)) + '\n'
(root/'README.md').write_text(out, encoding='utf-8')
