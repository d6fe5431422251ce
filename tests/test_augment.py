"""`dialsum augment`: speaker swaps that keep the tags consistent, back-translation through tiny local models and
through a local chat-completions server driven by the real openai client (retries, resume, the key never written),
bad inputs."""
import json, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

from casebook import record
from conftest import dialsum
from dialsum.augment import (REASONS, Step, augment, partial_path, report_path, speakers, swap_tags, tag_permutations)
from dialsum.data import make_demo_data, read_split
from dialsum.metrics import score_rows

KEY = 'sk-test-h15b-0123456789abcdefghijklmnop'


def read(path): return pd.read_csv(path, dtype=str, keep_default_na=False)


class Done:
    "What a command did: its exit code and what it printed."
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def cli(capsys):
    "`dialsum ...` in this process (a subprocess imports papermill and torch again: many seconds on a busy machine)."
    from dialsum.cli import main
    def run(*args):
        capsys.readouterr()
        try: code = main([str(a) for a in args])
        except SystemExit as e: code = e.code  # argparse's refusals
        out, err = capsys.readouterr()
        return Done(code, out, err)
    return run


def consistent(parent, row):
    "Whether `row` is `parent` with its speakers permuted by one non-identity permutation, dialogue and summary alike."
    return any(swap_tags(parent['dialogue'], p) == row['dialogue'] and swap_tags(parent['summary'], p) == row['summary']
               for p in tag_permutations(speakers(parent['dialogue'])))


@pytest.fixture
def demo(tmp_path):
    return make_demo_data(tmp_path/'data', 40, 4, 4)['train']


def test_speaker_swap_doubles_demo(demo, tmp_path):
    "--with-input doubles the demo train file; every new row is its parent under one permutation of its speakers."
    p = dialsum('augment', 'speaker-swap', '--input', demo, '--output', tmp_path/'swap.csv', '--with-input')
    assert p.returncode == 0, p.stderr
    out, parents = read(tmp_path/'swap.csv'), read(demo).set_index('fname')
    assert len(out) == 2 * len(parents) and out.fname.is_unique
    new = out[out.source == 'speaker-swap']
    assert len(new) == len(parents) and set(new.parent_fname) == set(parents.index)
    assert all(consistent(parents.loc[r['parent_fname']], r) for r in new.to_dict('records'))
    assert all(r['dialogue'] != parents.loc[r['parent_fname'], 'dialogue'] for r in new.to_dict('records'))
    read_split(tmp_path/'swap.csv', 'train')  # an ordinary training file
    rep = json.loads(report_path(tmp_path/'swap.csv').read_text())
    assert (rep['input_rows'], rep['new_rows'], rep['written_rows']) == (40, 40, 80)


def test_speaker_swap_three_speakers_and_left_out(cli, tmp_path):
    "Three speakers: five permutations (or one, the same for a seed); a summary naming an absent speaker is counted."
    rows = pd.DataFrame(dict(fname=['a', 'b', 'c'],
                             dialogue=['#Person1#: 안녕\n#Person2#: 네\n#Person3#: 반가워요, #Person1#씨',
                                       '#Person1#: 어디 가?\n#Person2#: 집에 가.', '#Person1#: 혼자 말한다.'],
                             summary=['#Person3#이 #Person1#에게 인사한다.', '#Person3#이 #Person1#을 부른다.',
                                      '#Person1#이 말한다.']))
    rows.to_csv(tmp_path/'in.csv', index=False)
    p = cli('augment', 'speaker-swap', '--input', tmp_path/'in.csv', '--output', tmp_path/'all.csv')
    assert p.returncode == 0, p.stderr
    out, parent = read(tmp_path/'all.csv'), rows.iloc[0]
    assert len(out) == 5 and set(out.parent_fname) == {'a'} and out.dialogue.is_unique
    assert all(consistent(parent, r) for r in out.to_dict('records'))
    rep = json.loads(report_path(tmp_path/'all.csv').read_text())
    assert rep['dropped'] == {'one_speaker': 1, 'summary_tag_not_in_dialogue': 1}
    assert 'dropped  1 summary_tag_not_in_dialogue' in p.stdout
    one = [cli('augment', 'speaker-swap', '--input', tmp_path/'in.csv', '--output', tmp_path/f'one{i}.csv',
                   '--permutations', 'one', '--seed', '3') for i in (1, 2)]
    assert all(q.returncode == 0 for q in one)
    assert len(read(tmp_path/'one1.csv')) == 1 and read(tmp_path/'one1.csv').equals(read(tmp_path/'one2.csv'))


def test_back_translate_fake_echo_restores_tags(demo, tmp_path):
    "A model that echoes: every tag comes back and the rows are the originals (too similar by default, kept with 0 1)."
    echo = lambda texts, step: list(texts)
    steps = [(echo, Step('translate', 'ko', 'en')), (echo, Step('translate', 'en', 'ko'))]
    rep = augment('back-translate', demo, tmp_path/'a.csv', steps, max_rows=10)
    assert rep['dropped'] == {'too_similar': 10} and not (tmp_path/'a.csv').exists()
    rep = augment('back-translate', demo, tmp_path/'b.csv', steps, keep=(0, 1), max_rows=10)
    out, src = read(tmp_path/'b.csv'), read(demo).head(10)
    assert rep['new_rows'] == 10 and out.dialogue.tolist() == src.dialogue.tolist()
    assert out.summary.tolist() == src.summary.tolist()
    assert out.fname.tolist() == [f + '-bt' for f in src.fname] and set(out.source) == {'back-translate'}


@pytest.mark.slow  # builds two tiny models and generates with them (a few seconds)
def test_back_translate_tiny_local_models(cli, demo, tmp_path):
    "Two tiny untrained seq2seq folders: their junk is filtered, every row counted by a known reason; no key, no hub."
    from dialsum.config import ScratchModel
    from dialsum.models import build_scratch_model
    texts = read(demo).dialogue.tolist() + read(demo).summary.tolist()
    spec = ScratchModel(vocab_size=400, d_model=16, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=32,
                        max_position_embeddings=128)
    fwd, back = (build_scratch_model(texts, spec, tmp_path/n, seed=s) for n, s in (('ko_en', 0), ('en_ko', 1)))
    p = cli('augment', 'back-translate', '--input', demo, '--output', tmp_path/'bt.csv', '--model', fwd,
            '--back-model', back, '--max-rows', 8, '--num-beams', 1, '--max-new-tokens', 8, '--max-length', 128,
            '--chunk', 4)
    rep = json.loads(report_path(tmp_path/'bt.csv').read_text())
    assert rep['input_rows'] == 8 and rep['new_rows'] + sum(rep['dropped'].values()) == 8, rep
    assert set(rep['dropped']) <= set(REASONS) and rep['models'] == [str(fwd), str(back)]
    assert p.returncode == (0 if rep['new_rows'] else 1), p.stderr
    assert (tmp_path/'bt.csv').exists() == bool(rep['new_rows']) and not partial_path(tmp_path/'bt.csv').exists()
    if rep['new_rows']:
        out = read(tmp_path/'bt.csv')
        parents = read(demo).set_index('fname')
        for r in out.to_dict('records'):
            assert set(speakers(r['summary'])) == set(speakers(parents.loc[r['parent_fname'], 'summary']))
    # a decoder-only folder is an instruct model: the step's instruction is its prompt
    from dialsum.augment import LocalModel, method_steps
    from dialsum.config import GenerationConfig
    causal = spec.model_copy(update=dict(arch='llama', max_position_embeddings=512))
    llama = build_scratch_model(texts, causal, tmp_path/'llm')
    lm = LocalModel(llama, GenerationConfig(num_beams=1, max_new_tokens=8, batch_size=4), max_length=400)
    rep = augment('paraphrase', demo, tmp_path/'pp.csv', method_steps('paraphrase', lm), max_rows=4)
    assert lm.family == 'causal' and rep['new_rows'] + sum(rep['dropped'].values()) == 4
    assert set(rep['dropped']) <= set(REASONS)


class Chat(BaseHTTPRequestHandler):
    "A chat-completions endpoint: 'translates' by echoing into English and dropping every 4th word back into Korean."
    def log_message(self, *a): pass

    def do_POST(self):
        s = self.server; n = int(self.headers.get('content-length', 0))
        body = json.loads(self.rfile.read(n))
        s.auth.append(self.headers.get('authorization')); s.calls += 1
        if s.calls in s.busy:
            return self.reply(429, {'error': {'message': 'slow down', 'type': 'rate_limit'}}, {'Retry-After': '0'})
        if s.fail_after is not None and s.ok >= s.fail_after: return self.reply(500, {'error': {'message': 'down'}})
        s.ok += 1
        prompt = body['messages'][-1]['content']
        text = prompt.split('\n\n', 1)[1]
        if 'into Korean' in prompt and '그대로' not in text:
            text = text.replace('[2]', '') if '태그' in text else '\n'.join(
                ' '.join(w for j, w in enumerate(l.split(' ')) if j % 4 != 3 or '[' in w) for l in text.split('\n'))
        answer = {'index': 0, 'finish_reason': 'stop', 'message': {'role': 'assistant', 'content': text}}
        self.reply(200, {'id': 'c1', 'object': 'chat.completion', 'created': 0, 'model': body['model'],
                         'choices': [answer], 'usage': {'prompt_tokens': 1, 'completion_tokens': 1, 'total_tokens': 2}})

    def reply(self, code, obj, headers=None):
        data = json.dumps(obj).encode()
        self.send_response(code); self.send_header('content-type', 'application/json')
        for k, v in (headers or {}).items(): self.send_header(k, v)
        self.send_header('content-length', str(len(data))); self.end_headers(); self.wfile.write(data)


@pytest.fixture
def server():
    s = ThreadingHTTPServer(('127.0.0.1', 0), Chat)
    s.auth, s.calls, s.ok, s.busy, s.fail_after = [], 0, 0, {1}, None
    threading.Thread(target=s.serve_forever, daemon=True).start()
    yield s
    s.shutdown(); s.server_close()


LINE = '오늘 오후에 회의실에서 새 프로젝트 일정과 예산을 함께 자세히 검토하기로 했어요'
ROWS = pd.DataFrame(dict(
    fname=[f'r{i}' for i in range(6)],
    dialogue=[f'#Person1#: {LINE} {i}번\n'
              '#Person2#: 좋아요 그러면 저도 자료를 미리 준비해서 회의실로 갈게요\n'
              '#Person1#: 고마워요 끝나고 점심도 같이 먹어요' for i in range(4)]
             + ['#Person1#: 그대로 두세요 오늘 일정은 바꾸지 않아요\n#Person2#: 네 그대로 둘게요',
                '#Person1#: 태그 번호는 #PhoneNumber#예요\n#Person2#: 네 알겠어요 #Person1#씨'],
    summary=[f'#Person1#과 #Person2#는 오후 회의에서 새 프로젝트 일정과 예산을 검토하고 점심을 함께 먹기로 한다 {i}'
             for i in range(4)]
            + ['#Person1#은 #Person2#에게 그대로 두라고 한다', '#Person1#은 #Person2#에게 태그 번호를 알려준다']))


def endpoint_args(server, out, *more):
    return ('augment', 'back-translate', '--input', out.parent/'in.csv', '--output', out, '--base-url',
            f'http://127.0.0.1:{server.server_port}/v1', '--model', 'tiny-chat', '--api-key-env', 'DIALSUM_TEST_KEY',
            '--rpm', 0, '--backoff', 0.01, '--chunk', 2, *more)


def test_back_translate_endpoint(cli, server, tmp_path, monkeypatch):
    "Through a local server and the real openai client: a 429 retried, a copy and a lost tag dropped, the rest kept."
    ROWS.to_csv(tmp_path/'in.csv', index=False)
    monkeypatch.setenv('DIALSUM_TEST_KEY', KEY)
    p = cli(*endpoint_args(server, tmp_path/'bt.csv'))
    assert p.returncode == 0, p.stderr
    rep = json.loads(report_path(tmp_path/'bt.csv').read_text())
    assert rep['dropped'] == {'tags_lost': 1, 'too_similar': 1} and rep['new_rows'] == 4, rep
    (ep,) = rep['models']
    assert ep['retries'] == 1 and ep['requests'] == 6 * 4 + 1 and ep['key_env'] == 'DIALSUM_TEST_KEY'
    assert set(server.auth) == {f'Bearer {KEY}'}  # the key was sent, from the environment
    out = read(tmp_path/'bt.csv'); src = ROWS.set_index('fname')
    assert out.parent_fname.tolist() == ['r0', 'r1', 'r2', 'r3'] and set(out.source) == {'back-translate'}
    old = [src.loc[f, c] for f in out.parent_fname for c in ('dialogue', 'summary')]
    sc = score_rows([r[c] for r in out.to_dict('records') for c in ('dialogue', 'summary')], old)['score'] / 100
    assert sc.between(0.65, 0.95).all(), sc.tolist()
    assert all(speakers(r['dialogue']) == speakers(src.loc[r['parent_fname'], 'dialogue'])
               for r in out.to_dict('records'))
    for text in (p.stdout, p.stderr, (tmp_path/'bt.csv').read_text(), report_path(tmp_path/'bt.csv').read_text()):
        assert KEY not in text
    assert '1 retried' in p.stdout and 'dropped  1 tags_lost' in p.stdout


def test_endpoint_resume(cli, server, tmp_path, monkeypatch):
    "The endpoint fails after two rows: the command stops with what it did kept; run again, it asks only for the rest."
    ROWS.to_csv(tmp_path/'in.csv', index=False)
    monkeypatch.setenv('DIALSUM_TEST_KEY', KEY)
    server.busy, server.fail_after = set(), 2 * 4  # two rows: dialogue and summary, two steps each
    p = cli(*endpoint_args(server, tmp_path/'bt.csv', '--retries', 1))
    assert p.returncode == 2 and 'run the same command again' in p.stderr and not (tmp_path/'bt.csv').exists()
    part = partial_path(tmp_path/'bt.csv')
    assert len(part.read_text().splitlines()) == 1 + 2 and KEY not in part.read_text()
    server.fail_after, server.calls = None, 0
    p = cli(*endpoint_args(server, tmp_path/'bt.csv', '--retries', 1))
    assert p.returncode == 0, p.stderr
    rep = json.loads(report_path(tmp_path/'bt.csv').read_text())
    assert rep['resumed_rows'] == 2 and server.calls == 4 * 4 and rep['new_rows'] == 4 and not part.exists()
    assert read(tmp_path/'bt.csv').parent_fname.tolist() == ['r0', 'r1', 'r2', 'r3']
    p = cli(*endpoint_args(server, tmp_path/'other.csv', '--keep-score', 0.1, 0.9))  # other options: a new file, fine
    assert p.returncode == 0, p.stderr


GIVEN = {'missing_input': 'dialsum augment back-translate --input pointing at no file',
         'missing_columns': 'dialsum augment speaker-swap on a CSV without a summary column',
         'lo_above_hi': 'dialsum augment back-translate --keep-score 0.9 0.5 (LO above HI)',
         'unknown_method': 'dialsum augment shuffle (no such method)',
         'no_key': 'dialsum augment back-translate --base-url URL with the key variable unset',
         'output_exists': 'dialsum augment with --output an existing file, without --force'}


@pytest.mark.parametrize('case', ['missing_input', 'missing_columns', 'lo_above_hi', 'unknown_method', 'no_key',
                                  'output_exists'])
def test_bad_inputs(cli, case, demo, tmp_path, monkeypatch):
    "Each refused with exit 2 and a message naming the file, option or variable; nothing written, an earlier file kept."
    monkeypatch.delenv('DIALSUM_TEST_KEY', raising=False)
    out, inp, extra = tmp_path/'out.csv', demo, []
    method = 'back-translate'
    if case == 'missing_input': inp, want = tmp_path/'none.csv', 'none.csv'
    if case == 'missing_columns':
        (tmp_path/'bad.csv').write_text('fname,dialogue\na,#Person1#: 안녕\n')
        inp, want = tmp_path/'bad.csv', "missing column(s) 'summary'"
        method = 'speaker-swap'
    if case == 'lo_above_hi': extra, want = ['--keep-score', '0.9', '0.5'], '--keep-score 0.9 0.5'
    if case == 'unknown_method': method, want = 'shuffle', "invalid choice: 'shuffle'"
    if case == 'no_key':
        extra, want = ['--base-url', 'http://127.0.0.1:9/v1', '--api-key-env', 'DIALSUM_TEST_KEY'], 'DIALSUM_TEST_KEY'
    if case == 'output_exists': out.write_text('mine\n'); want = 'exists'
    p = cli('augment', method, '--input', inp, '--output', out, '--model', 'no/such/model', *extra)
    assert p.returncode == 2 and want in p.stderr, p.stderr
    assert (out.read_text() == 'mine\n') if case == 'output_exists' else not out.exists()
    assert 'Traceback' not in p.stderr
    record(f'augment-{case.replace("_", "-")}', 'Augment', GIVEN[case], 'refused', 'exit 2, nothing written',
           p.stderr.strip().splitlines()[-1].removeprefix('error: ').removeprefix('dialsum augment: error: '), tmp_path)


def test_speaker_swap_real_dev(cli, real_ko, tmp_path):
    "The competition's dev file: each row of 2 or 3 speakers gets its permutations, all consistent; the rest counted."
    p = cli('augment', 'speaker-swap', '--input', real_ko/'dev.csv', '--output', tmp_path/'swap.csv')
    assert p.returncode == 0, p.stderr
    out, rep = read(tmp_path/'swap.csv'), json.loads(report_path(tmp_path/'swap.csv').read_text())
    parents = read_split(real_ko/'dev.csv', 'train').set_index('fname')
    assert len(out) == rep['new_rows'] and out.fname.is_unique and sum(rep['dropped'].values()) < len(parents) / 10
    assert len(set(out.parent_fname)) + sum(rep['dropped'].values()) == len(parents)
    from dialsum.data import clean_split
    clean = clean_split(parents.reset_index())[0].set_index('fname')
    assert all(consistent(clean.loc[r['parent_fname']], r) for r in out.to_dict('records'))
