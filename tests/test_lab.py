"JupyterLab (a dev requirement, `make lab`): the venv's `jupyter lab` runs, and a kernel started from the venv imports dialsum."
import subprocess, sys

from conftest import BIN, ROOT


def test_jupyter_lab_version():
    r = subprocess.run([str(BIN/'jupyter'), 'lab', '--version'], capture_output=True, text=True, timeout=120)
    import jupyterlab
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == jupyterlab.__version__


def test_venv_kernel_imports_dialsum(tmp_path):
    "The python3 kernel that lab offers runs this venv's Python: it imports dialsum from the project and reports its version."
    from jupyter_client.manager import start_new_kernel
    import dialsum
    km, kc = start_new_kernel(kernel_name='python3', cwd=str(tmp_path))  # not the project folder: dialsum must come from the install
    try:
        got = []
        reply = kc.execute_interactive('import sys, dialsum; print(sys.executable, dialsum.__version__, dialsum.__file__)', timeout=120,
                                       output_hook=lambda m: got.append(m['content'].get('text', '')) if m['msg_type'] == 'stream' else None)
        assert reply['content']['status'] == 'ok', reply['content']
    finally:
        kc.stop_channels(); km.shutdown_kernel(now=True)
    exe, version, path = ''.join(got).split()
    assert exe == sys.executable and version == dialsum.__version__
    assert path.startswith(str(ROOT/'dialsum'))
