"""The bad-input corpus: data files, configs, model folders and output folders that are wrong in one way each.

Every case is made here, in a temporary folder (no real data is copied). A refused case must raise a
`DialsumError` subclass (or, on the command line, exit non-zero without a traceback) with a message that
names the file, row, key or value and says what to do, and must leave everything that existed before as
it was, with nothing promoted. A case accepted by design asserts what is accepted and what is reported.
`tools/cases_page.py` runs this file and turns the logged cases into `nbs/reliability.md`."""
import contextlib, errno, json, os, shutil, unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional
from unittest import mock

import pytest

from casebook import assert_kept, prior_runs, record, snapshot
from conftest import ROOT, dialsum, run_folders
from dialsum.config import Columns, ConfigError, DataConfig, DialsumError, ModelConfig, ScratchModel
from dialsum.data import DataError, load_splits

SMOKE = ROOT/'configs'/'experiments'/'smoke.yaml'

TRAIN = ('fname,dialogue,summary,topic\n'
         'train_0,"#Person1#: 안녕하세요.\n#Person2#: 네, 안녕하세요.",#Person1#과 #Person2#가 인사한다.,인사\n'
         'train_1,"#Person1#: 몇 시예요?\n#Person2#: 세 시요.",#Person1#이 #Person2#에게 시간을 묻는다.,시간\n'
         'train_2,"#Person1#: 우체국이 어디예요?\n#Person2#: 저기 있어요.",#Person1#이 길을 묻는다.,길\n')
DEV = TRAIN.replace('train_', 'dev_')
TEST = ('fname,dialogue\n'
        'test_0,"#Person1#: 배고파요.\n#Person2#: 밥 먹으러 가요."\n'
        'test_1,"#Person1#: 비가 와요.\n#Person2#: 우산 있어요?"\n')


def write_splits(d, **files):
    "train.csv, dev.csv and test.csv in `d`: valid ones, except those given (str is UTF-8, bytes as they are)."
    d = Path(d); d.mkdir(parents=True, exist_ok=True)
    for split, text in dict(dict(train=TRAIN, dev=DEV, test=TEST), **files).items():
        if text is not None: (d/f'{split}.csv').write_bytes(text if isinstance(text, bytes) else text.encode('utf-8'))
    return d


ROW2_DIALOGUE = '"#Person1#: 몇 시예요?\n#Person2#: 세 시요."'  # train_1's dialogue as train.csv holds it
ROW2_DIALOGUE_EMPTY = ["empty or missing dialogue at row 2 (fname 'train_1')", 'fill it in or remove the row']


def train_with_row2(dialogue):
    "TRAIN with row 2's dialogue (train_1) replaced by `dialogue`, written as the CSV holds it (quotes included)."
    return TRAIN.replace(ROW2_DIALOGUE, dialogue)


def missing_summary(split, row):
    "The words of the refusal of the `split` file whose summary at `row` (1-based, fname `{split}_{row - 1}`) is missing."
    return [f"empty or missing summary at row {row} (fname '{split}_{row - 1}')", f'every {split} row needs a reference summary']


def load(d, **data):
    "`load_splits` of the three files in `d`, as a config naming them would."
    return load_splits(DataConfig(**dict(dict(train='train.csv', dev='dev.csv', test='test.csv'), **data)), root=Path(d))


def refused(fn, err_type, expect, where, case, category, given):
    "Run `fn`; it must raise `err_type` (a DialsumError) naming all of `expect`, and leave `where` as it was."
    before = snapshot(where)
    with pytest.raises(DialsumError) as e:
        fn()
    msg = str(e.value)
    assert isinstance(e.value, err_type), f"{type(e.value).__name__}: {msg}"
    for s in expect: assert s in msg, f"{s!r} not in {msg!r}"
    assert snapshot(where) == before, 'a refused input changed or added files'
    record(case, category, given, 'refused', f"{type(e.value).__name__}", msg, where)
    return msg


# ---------------------------------------------------------------------------------------------- CSV files

@dataclass
class CsvCase:
    id: str
    given: str
    files: dict  # split -> text or bytes
    expect: list
    data: dict = field(default_factory=dict)  # DataConfig keys


CSV_REFUSED = [
    CsvCase('csv-missing-column', 'train.csv without a summary column',
            {'train': 'fname,dialogue\ntrain_0,#Person1#: 네\n'}, ["train.csv: missing column(s) 'summary'", 'set data.columns']),
    CsvCase('csv-extra-column-collides', "train.csv with both 'summary' and 'abstract', and data.columns.summary: abstract",
            {'train': 'fname,dialogue,summary,abstract\ntrain_0,#Person1#: 네,요약,요약\n'},
            ["columns 'summary' and 'abstract' would both become 'summary'", 'rename or remove one of them'],
            dict(columns=Columns(summary='abstract'))),
    CsvCase('csv-duplicated-fname', 'train.csv where rows 1 and 3 have the same fname',
            {'train': TRAIN.replace('train_2', 'train_0')}, ["duplicated fname 'train_0' at rows 1, 3", 'every fname must be unique']),
    CsvCase('csv-empty-fname', 'train.csv with an empty fname in row 2',
            {'train': TRAIN.replace('train_1,', ',')}, ['empty fname at row 2', 'give every row a unique fname']),
    CsvCase('csv-empty-dialogue', 'train.csv with an empty dialogue in row 2',
            {'train': train_with_row2('')}, ROW2_DIALOGUE_EMPTY),
    CsvCase('csv-whitespace-dialogue', 'train.csv whose row-2 dialogue is spaces, a tab and a newline',
            {'train': train_with_row2('"  \t \n "')}, ROW2_DIALOGUE_EMPTY),
    CsvCase('csv-nan-summary', 'dev.csv whose first summary is NaN',
            {'dev': DEV.replace('#Person1#과 #Person2#가 인사한다.', 'NaN')},
            ['dev.csv', *missing_summary('dev', 1)]),
    CsvCase('csv-cp949', 'train.csv saved as CP949 (Excel on Korean Windows)',
            {'train': TRAIN.encode('cp949')}, ['train.csv: not UTF-8 text', 'CP949/EUC-KR', 'save the file as UTF-8']),
    CsvCase('csv-mixed-encodings', 'train.csv in UTF-8 with one row pasted in as CP949',
            {'train': TRAIN.encode() + 'train_3,#Person1#: 아니요,#Person1#이 거절한다.,거절\n'.encode('cp949')},
            ['train.csv: not UTF-8 text', '(line 8)', 'save the file as UTF-8']),
    CsvCase('csv-undecodable-bytes', 'test.csv with the bytes 0x80 0x81 inside a dialogue',
            {'test': TEST.encode().replace('배고파요'.encode(), b'\x80\x81')}, ['test.csv: not UTF-8 text: byte 0x80', '(line 2)', 'save the file as UTF-8']),
    CsvCase('csv-utf16', 'dev.csv saved as UTF-16',
            {'dev': DEV.encode('utf-16')}, ['dev.csv: not UTF-8 text: byte 0xff at byte offset 0', 'save the file as UTF-8']),
    CsvCase('csv-zero-rows', 'test.csv with a header and no rows',
            {'test': 'fname,dialogue\n'}, ['test.csv: no data rows, only a header', 'needs at least one row']),
    CsvCase('csv-empty-file', 'dev.csv of zero bytes', {'dev': b''}, ['dev.csv: the file is empty', 'it needs a header row']),
    CsvCase('csv-unquoted-comma', 'train.csv whose first dialogue has a comma outside quotes',
            {'train': 'fname,dialogue,summary\ntrain_0,#Person1#: 네, 좋아요,#Person1#이 좋다고 한다.\n'},
            ["train.csv: more fields than the header's 3 at line 2 (4 fields)", 'must be in double quotes']),
    CsvCase('csv-unclosed-quote', 'train.csv whose last dialogue opens a quote that is never closed',
            {'train': TRAIN.replace('"#Person1#: 우체국이 어디예요?\n#Person2#: 저기 있어요."', '"#Person1#: 우체국이 어디예요?')},
            ['train.csv: not a valid CSV file', 'must be in double quotes']),
    CsvCase('csv-missing-file', 'data.dev naming a file that is not there', {}, ['dev.csv: dev file not found', 'check data.dev'],
            dict(dev='nope/dev.csv')),
    CsvCase('csv-dialogue-emptied-by-cleaning', 'train.csv whose row-2 dialogue is a lone <br> (empty once cleaned)',
            {'train': train_with_row2('<br>')},
            ["train.csv:\n  dialogue empty after cleaning at row 2 (fname 'train_1', line 4), which holds only '<br>'",
             'data.newline_literals turns', 'fill it in or remove the row']),
    CsvCase('csv-summary-emptied-by-cleaning', r'train.csv whose row-3 summary is the two characters \n and spaces',
            {'train': TRAIN.replace('#Person1#이 길을 묻는다.', r' \n  \n')},
            ["train.csv:\n  summary empty after cleaning at row 3 (fname 'train_2', line 6)", 'data.newline_literals turns',
             'fill it in or remove the row']),
    CsvCase('csv-duplicate-header', "test.csv whose header is fname,dialogue,dialogue (pandas would read the second as dialogue.1)",
            {'test': 'fname,dialogue,dialogue\ntest_0,#Person1#: 네,#Person1#: 아니요\n'},
            ["test.csv: the header (line 1) names a column more than once: 'dialogue' in columns 2, 3", 'rename or remove the extra column']),
    CsvCase('csv-header-repeated-as-row', 'test.csv of two files joined with their headers (the header line again as row 2)',
            {'test': TEST.replace('test_1,', 'fname,dialogue\ntest_1,')},
            ["test.csv: row 2 (fname 'fname') repeats the header line (fname,dialogue)", 'remove that line']),
    CsvCase('csv-zero-width-dialogue', 'train.csv whose row-2 dialogue is only zero-width characters (U+200B, U+200D, U+FEFF)',
            {'train': train_with_row2('\u200b\u200d\ufeff')}, ROW2_DIALOGUE_EMPTY),
    CsvCase('csv-nul-summary', 'dev.csv whose row-3 summary is a NUL and a space',
            {'dev': DEV.replace('#Person1#이 길을 묻는다.', '\x00 ')},
            ['dev.csv', *missing_summary('dev', 3)]),
    CsvCase('csv-data-path-is-a-folder', 'data.train naming the folder that holds the CSV files', {},
            ['data: is a folder, not a CSV file (it holds dev.csv, test.csv, train.csv)', 'set data.train to the train CSV file'],
            dict(train='.')),
]


@pytest.mark.parametrize('case', CSV_REFUSED, ids=lambda c: c.id)
def test_csv_refused(case, tmp_path):
    d = write_splits(tmp_path/'data', **case.files)
    refused(lambda: load(d, **case.data), DataError, case.expect, tmp_path, case.id, 'CSV files', case.given)


LONG = '\n'.join(f"#Person{i % 2 + 1}#: " + ' '.join(['가나다라마바사'] * 6) for i in range(1200))[:49_999] + '요'  # 50,000 characters, already clean


def _accepted_bom(sp):
    assert sp.train.columns[0] == 'fname' and sp.train.fname.tolist() == ['train_0', 'train_1', 'train_2']
    return f"columns {list(sp.train.columns)}; rows read {sp.report['train']['rows_read']}"

def _accepted_crlf(sp):
    assert not any('\r' in t for df in (sp.train, sp.dev, sp.test) for t in df.dialogue)
    assert sp.train.dialogue[0] == '#Person1#: 안녕하세요.\n#Person2#: 네, 안녕하세요.'
    return r"every \r\n read as \n, inside quoted dialogues too"

def _accepted_quoted_newlines(sp):
    assert [len(t.split('\n')) for t in sp.train.dialogue] == [2, 2, 2]
    return 'each quoted dialogue is one row with its turns on separate lines'

def _accepted_long(sp):
    from dialsum.data import model_inputs
    from dialsum.models import train_tokenizer
    from dialsum.features import make_features
    assert len(LONG) == 50_000 and sp.train.dialogue[1] == LONG
    tok = train_tokenizer([LONG[:3000]] + list(sp.train.summary), 400)
    feats = make_features(tok, model_inputs(sp.train), list(sp.train.summary), 64, 16)
    assert max(len(f['input_ids']) for f in feats) == 64 and len(feats) == 3
    return f"the dialogue ({len(sp.train.dialogue[1]):,} characters) is kept whole; model inputs are cut to model.max_source_length (64 tokens here)"

def _accepted_unknown_tags(sp):
    assert sp.report['train']['unknown_tags'] == {'#Person8#': 1, '#Foo#': 1}
    assert '#Person8#' in sp.train.dialogue[0]
    return f"kept in the text and reported: unknown_tags {sp.report['train']['unknown_tags']}"

def _accepted_test_summaries(sp):
    assert 'summary' in sp.test.columns and sp.report['test']['notes'] == ['test.csv has a summary column: it is kept, but the test split is never scored']
    return sp.report['test']['notes'][0]

def _accepted_extra_column(sp):
    assert sp.train.speaker_count.tolist() == ['2', '2', '2']
    return 'the column is kept as text; dialsum uses only its own columns'

def _accepted_nfd(sp):
    assert sp.dev.dialogue.tolist() == sp.train.dialogue.str.replace('train_', 'dev_').tolist()  # the same text as the NFC train.csv
    assert all(unicodedata.is_normalized('NFC', t) for t in sp.dev.dialogue.tolist() + sp.dev.summary.tolist())
    n = sp.report['dev']['normalized']
    assert n['dialogue']['unicode_nfc'] == n['summary']['unicode_nfc'] == n['topic']['unicode_nfc'] == 3
    return f"read as NFC (the form train.csv has) and counted: normalized {dict(dialogue=n['dialogue'], summary=n['summary'])}"

def _accepted_nul(sp):
    assert sp.train.dialogue[0] == '#Person1#: 안녕하세요.\n#Person2#: 네, 안녕하세요.'
    assert sp.train.summary[0] == '#Person1#과 #Person2#가 인사한다.'
    n = sp.report['train']['normalized']
    assert (n['dialogue']['control_characters'], n['dialogue']['zero_width'], n['summary']['control_characters']) == (1, 1, 1)
    return f"removed and counted: normalized {dict(dialogue=n['dialogue'], summary=n['summary'])}"

def _accepted_copies(sp):
    assert sp.report['test']['copies_of_train'] == {'rows': 1, 'first': ['test_0 = train_2']}
    assert sp.report['dev']['copies_of_train']['rows'] == 3 and len(sp.test) == 2  # this corpus's dev.csv copies train.csv
    return sp.report['test']['notes'][0]

def _accepted_literal_newlines(sp):
    assert sp.train.dialogue[0] == '#Person1#: 안녕하세요.\n#Person2#: 네, 안녕하세요.'
    assert sp.report['train']['cleaning']['dialogue']['newline_literals'] == 1
    return f"cleaned to real newlines and counted: cleaning {sp.report['train']['cleaning']['dialogue']}"


CSV_ACCEPTED = [
    ('csv-bom', 'train.csv starting with a UTF-8 BOM', {'train': '\ufeff' + TRAIN}, _accepted_bom),
    ('csv-crlf', 'all three files with Windows line ends (CRLF)', {s: t.replace('\n', '\r\n') for s, t in
                                                                  dict(train=TRAIN, dev=DEV, test=TEST).items()}, _accepted_crlf),
    ('csv-quoted-newlines', 'dialogues whose turns are separated by newlines inside double quotes', {}, _accepted_quoted_newlines),
    ('csv-long-dialogue', 'train.csv with a 50,000-character dialogue',
     {'train': train_with_row2(f'"{LONG}"')}, _accepted_long),
    ('csv-unknown-speaker-tags', 'a dialogue with #Person8# and #Foo#, tags dialsum does not know',
     {'train': TRAIN.replace('#Person2#: 네, 안녕하세요.', '#Person8#: 네, #Foo# 안녕하세요.')}, _accepted_unknown_tags),
    ('csv-test-with-summaries', 'test.csv that has a summary column',
     {'test': 'fname,dialogue,summary\ntest_0,#Person1#: 네,요약\n'}, _accepted_test_summaries),
    ('csv-extra-column', 'train.csv with an extra column speaker_count',
     {'train': TRAIN.replace('topic\n', 'topic,speaker_count\n').replace('인사\n', '인사,2\n').replace('시간\n', '시간,2\n').replace('길\n', '길,2\n')},
     _accepted_extra_column),
    ('csv-literal-newlines', r'a dialogue with the two characters \n instead of newlines',
     {'train': TRAIN.replace('"#Person1#: 안녕하세요.\n#Person2#', '"#Person1#: 안녕하세요.\\n#Person2#')}, _accepted_literal_newlines),
    ('csv-nfd', 'dev.csv in NFD (decomposed Hangul, as macOS writes it)',
     {'dev': unicodedata.normalize('NFD', DEV)}, _accepted_nfd),
    ('csv-nul-and-zero-width', 'a dialogue with a NUL at its start and a zero-width space inside, and a summary with an escape character',
     {'train': TRAIN.replace('"#Person1#: 안녕하세요.', '"\x00#Person1#: 안녕\u200b하세요.').replace('인사한다.', '인사\x1b한다.')},
     _accepted_nul),
    ('csv-test-copies-train', 'test.csv whose first row has the dialogue of train_2 (one space more)',
     {'test': TEST.replace('"#Person1#: 배고파요.\n#Person2#: 밥 먹으러 가요."', '"#Person1#:  우체국이 어디예요?\n#Person2#: 저기 있어요."')},
     _accepted_copies),
]


@pytest.mark.parametrize('case_id,given,files,check', CSV_ACCEPTED, ids=[c[0] for c in CSV_ACCEPTED])
def test_csv_accepted(case_id, given, files, check, tmp_path):
    d = write_splits(tmp_path/'data', **files)
    before = snapshot(d)
    report = check(load(d))
    assert snapshot(d) == before
    record(case_id, 'CSV files', given, 'accepted', 'accepted', report, tmp_path)


CLI_CSV = [
    # id, given, files (split -> text or bytes), the split whose file is named, expected words
    ('csv-missing-column-cli', 'dialsum run with a train.csv that has no summary column',
     {'train': 'fname,dialogue\ntrain_0,#Person1#: 네\n'}, 'train', ["missing column(s) 'summary'", 'set data.columns']),
    ('csv-undecodable-bytes-cli', 'dialsum run with a test.csv holding the bytes 0x80 0x81',
     {'test': TEST.encode().replace('배고파요'.encode(), b'\x80\x81')}, 'test', ['not UTF-8 text: byte 0x80', '(line 2)', 'save the file as UTF-8']),
    ('csv-zero-rows-cli', 'dialsum run with a test.csv that has a header and no rows',
     {'test': 'fname,dialogue\n'}, 'test', ['no data rows, only a header', 'needs at least one row']),
    ('csv-nan-summary-cli', 'dialsum run with a train.csv whose second summary is NaN',
     {'train': TRAIN.replace('#Person1#이 #Person2#에게 시간을 묻는다.', 'NaN')}, 'train',
     missing_summary('train', 2)),
    ('csv-duplicate-header-cli', 'dialsum run with a test.csv whose header is fname,dialogue,dialogue',
     {'test': 'fname,dialogue,dialogue\ntest_0,#Person1#: 네,#Person1#: 아니요\n'}, 'test',
     ["the header (line 1) names a column more than once: 'dialogue' in columns 2, 3", 'rename or remove the extra column']),
    ('csv-zero-width-summary-cli', 'dialsum run with a train.csv whose second summary is a zero-width space',
     {'train': TRAIN.replace('#Person1#이 #Person2#에게 시간을 묻는다.', '\u200b')}, 'train',
     missing_summary('train', 2)),
]


@pytest.mark.parametrize('case_id,given,files,split,expect', CLI_CSV, ids=[c[0] for c in CLI_CSV])
def test_csv_error_through_the_cli(case_id, given, files, split, expect, tmp_path):
    "A data error found inside the run: exit 1, the run recorded as failed with the message, indexed, nothing promoted."
    runs = prior_runs(tmp_path/'runs'); before = snapshot(runs)
    d = write_splits(tmp_path/'data', **files)
    p = dialsum('run', SMOKE, f'output.runs_dir={runs}', 'data.demo=null', f'data.train={d/"train.csv"}',
                f'data.dev={d/"dev.csv"}', f'data.test={d/"test.csv"}')
    assert p.returncode == 1, p.stdout + p.stderr
    assert 'FAILED' in p.stderr and 'Traceback' not in p.stderr and expect[0] in p.stderr, p.stderr
    (run,) = [r for r in run_folders(runs) if r.name != 'old_20260101-000000']
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'failed' and md['error'].startswith('DataError: ') and str(d/f'{split}.csv') in md['error'], md
    for s in expect: assert s in md['error'], (s, md['error'])
    assert not (run/'checkpoints').exists() and not (run/'submission.csv').exists()
    assert_kept(runs, before)
    from dialsum.submissions import read_index
    assert sorted(read_index(runs).status) == ['completed', 'failed']
    record(case_id, 'CSV files', given, 'refused', 'exit 1, run recorded as failed', md['error'], tmp_path)


# ---------------------------------------------------------------------------------------------- configs

def _yaml(d, name, text):
    p = Path(d)/name; p.write_text(text, encoding='utf-8'); return p

def _loop(d):
    _yaml(d, 'b.yaml', 'base: a.yaml\n')
    return _yaml(d, 'a.yaml', 'base: b.yaml\nexperiment: a\n')

def _cp949(d):
    p = Path(d)/'cp.yaml'; p.write_bytes(f'base: {SMOKE}\nexperiment: 한국어\n'.encode('cp949')); return p

BOMB = ('a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n'
        + ''.join(f'{n}: &{n} [{", ".join([f"*{p}"] * 9)}]\n' for p, n in zip('abcdef', 'bcdefg'))[:-1] + '\nexperiment: bomb\n')

CFG_CASES = [
    # id, given, how to make (tmp -> (config, overrides)), expected words
    ('cfg-unknown-key', 'override training.lerning_rate=3e-5 (a typo)',
     lambda d: (SMOKE, ['training.lerning_rate=3e-5']), ["unknown key 'training.lerning_rate'; did you mean 'training.learning_rate'?"]),
    ('cfg-unknown-key-in-file', 'a config file with generation.num_beam',
     lambda d: (_yaml(d, 'typo.yaml', f'base: {SMOKE}\nexperiment: typo\ngeneration: {{num_beam: 2}}\n'), []),
     ['typo.yaml', "unknown key 'generation.num_beam'; did you mean 'generation.num_beams'?"]),
    ('cfg-wrong-type', 'override generation.num_beams=four',
     lambda d: (SMOKE, ['generation.num_beams=four']),
     ['generation.num_beams: expected a whole number', "(got 'four')", 'set generation.num_beams to a whole number']),
    ('cfg-negative-learning-rate', 'override training.learning_rate=-1e-5',
     lambda d: (SMOKE, ['training.learning_rate=-1e-5']),
     ['training.learning_rate: expected a number greater than 0', "(got '-1e-5')", 'set training.learning_rate to a number greater than 0']),
    ('cfg-encoder-above-positions', 'model.max_source_length=1024 for a model with 256 positions',
     lambda d: (SMOKE, ['model.max_source_length=1024']),
     ["max_source_length (1024) is above the model's max_position_embeddings (256)", 'lower model.max_source_length']),
    ('cfg-missing-file', 'a config path that does not exist',
     lambda d: (Path(d)/'nope.yaml', []), ['nope.yaml: config file not found', 'check the path']),
    ('cfg-python-object-tag', 'YAML with a !!python/object/apply tag that would create a file',
     lambda d: (_yaml(d, 'evil.yaml', f'experiment: !!python/object/apply:os.system ["touch {Path(d)/"pwned"}"]\n'), []),
     ['evil.yaml: not valid YAML (tags that build Python objects are refused)', 'remove the !! tag and write a plain value']),
    ('cfg-include-loop', "a.yaml with base: b.yaml and b.yaml with base: a.yaml",
     lambda d: (_loop(d), []),
     ["'base' include loop", 'a.yaml -> ', 'b.yaml -> ', "remove one of these 'base:' lines"]),
    ('cfg-missing-base', 'base: naming a file that is not there',
     lambda d: (_yaml(d, 'orphan.yaml', 'base: gone.yaml\nexperiment: orphan\n'), []),
     ["orphan.yaml: its line 'base: gone.yaml' names", "gone.yaml, which is not there",
      "'base' is resolved relative to the folder of the file that holds it", 'not the project folder; fix that line']),
    ('cfg-yaml-syntax', 'a YAML file with an unclosed {',
     lambda d: (_yaml(d, 'broken.yaml', f'base: {SMOKE}\ntraining: {{learning_rate: 1.0e-5\n'), []), ['broken.yaml: not valid YAML', 'line', 'fix the YAML at the line and column shown']),
    ('cfg-top-level-list', 'a YAML file that is a list',
     lambda d: (_yaml(d, 'list.yaml', '- experiment: x\n'), []), ['list.yaml: the top level must be a mapping of keys, got list', 'write one `key: value` per line']),
    ('cfg-not-utf8', 'a config saved as CP949',
     lambda d: (_cp949(d), []),
     ['cp.yaml: not UTF-8', 'save it as UTF-8']),
    ('cfg-override-syntax', "an override written 'training.learning_rate 3e-5'",
     lambda d: (SMOKE, ['training.learning_rate 3e-5']), ['write it as section.key=value']),
    ('cfg-experiment-path', 'override experiment=../../escape',
     lambda d: (SMOKE, ['experiment=../../escape']),
     ["experiment: '../../escape' cannot be an experiment name", "use 1 to 80 letters, digits, '_', '.' or '-'"]),
    ('cfg-demo-with-files', 'override data.train=my.csv on a config with data.demo (the demo would replace the file)',
     lambda d: (SMOKE, ['data.train=my.csv']), ['data.demo generates the data, so data.train would be ignored', 'set data.demo: null to use your files']),
    ('cfg-eval-steps-without-steps', 'overrides training.eval_strategy=epoch and training.eval_steps=50',
     lambda d: (SMOKE, ['training.eval_strategy=epoch', 'training.eval_steps=50']),
     ["training.eval_steps (50) acts only with eval_strategy 'steps'", "set training.eval_strategy: steps, or training.eval_steps: null"]),
    ('cfg-patience-without-eval', 'overrides training.eval_strategy=no (YAML reads it as false) with early_stopping_patience=2',
     lambda d: (SMOKE, ['training.eval_strategy=no', 'training.eval_steps=null', 'training.early_stopping_patience=2']),
     ["training.early_stopping_patience (2) acts only when training evaluates, and eval_strategy is 'no'",
      'set training.early_stopping_patience: null']),
    ('cfg-duplicate-section', 'a config file with two training: blocks (YAML keeps the second, the first was dropped)',
     lambda d: (_yaml(d, 'twice.yaml', f'base: {SMOKE}\nexperiment: twice\ntraining:\n  seed: 3\ngeneration: {{num_beams: 2}}\n'
                                       'training:\n  learning_rate: 1.0e-3\n'), []),
     ["twice.yaml: the key 'training' is given twice in one mapping, at lines 3 and 6", 'merge them into one']),
    ('cfg-duplicate-key', 'a config file with training.max_steps given twice',
     lambda d: (_yaml(d, 'steps.yaml', f'base: {SMOKE}\nexperiment: steps\ntraining:\n  max_steps: 4\n  seed: 3\n  max_steps: 8\n'), []),
     ["steps.yaml: the key 'max_steps' is given twice in one mapping, at lines 4 and 6", 'YAML would keep only the second']),
    ('cfg-alias-bomb', f'a {len(BOMB)}-byte YAML file of 7 levels of nested aliases (billion laughs)',
     lambda d: (_yaml(d, 'bomb.yaml', BOMB), []),
     ['bomb.yaml: its aliases (*name) expand to ', 'more than the 10,000 a config may hold', 'write the values out']),
    ('cfg-empty-file', 'an empty config file',
     lambda d: (_yaml(d, 'empty.yaml', ''), []), ['empty.yaml: the file is empty (or holds only comments)', 'experiment: NAME']),
    ('cfg-config-is-a-folder', 'a folder given as the config',
     lambda d: (Path(d), []), ['cfg: is a folder, not a config file', 'give the YAML file']),
    ('cfg-seed-true', 'override training.seed=true (pydantic would make it seed 1)',
     lambda d: (SMOKE, ['training.seed=true']), ['training.seed: true is true or false, not a number', 'write a number']),
    ('cfg-learning-rate-yes', 'a config file with learning_rate: yes',
     lambda d: (_yaml(d, 'yes.yaml', f'base: {SMOKE}\nexperiment: yes_lr\ntraining: {{learning_rate: yes}}\n'), []),
     ['yes.yaml', 'training.learning_rate: true is true or false, not a number', 'YAML reads true, false, yes, no, on and off so']),
    ('cfg-date-as-name', 'override experiment=2024-01-01 (YAML reads an unquoted date)',
     lambda d: (SMOKE, ['experiment=2024-01-01']),
     ["experiment: YAML reads 2024-01-01 as a date, not a text; put it in quotes: experiment: '2024-01-01'"]),
    ('cfg-max-steps-zero', 'override training.max_steps=0 (transformers trains one step and the run scored an untrained model)',
     lambda d: (SMOKE, ['training.max_steps=0']),
     ['training.max_steps: 0 trains no step', 'set training.max_steps to -1 (train for num_train_epochs) or to a number of steps']),
]


@pytest.mark.parametrize('case_id,given,make,expect', CFG_CASES, ids=[c[0] for c in CFG_CASES])
def test_config_refused_by_the_cli(case_id, given, make, expect, tmp_path):
    "A bad config exits 2 with its message before any folder or record is made."
    runs = prior_runs(tmp_path/'runs'); before, names = snapshot(runs), sorted(q.name for q in runs.iterdir())
    d = tmp_path/'cfg'; d.mkdir()
    config, overrides = make(d)
    p = dialsum('run', config, f'output.runs_dir={runs}', *overrides, timeout=120)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.startswith('error: ') and 'Traceback' not in p.stderr, p.stderr
    for s in expect: assert s in p.stderr, f"{s!r} not in {p.stderr!r}"
    assert len(p.stderr) < 2000, f'a {len(p.stderr):,}-character message'
    assert snapshot(runs) == before and sorted(q.name for q in runs.iterdir()) == names
    assert not (d/'pwned').exists() and not (tmp_path.parent/'escape').exists()
    record(case_id, 'Configs', given, 'refused', 'exit 2', p.stderr.removeprefix('error: '), tmp_path)


def test_resume_flag_in_a_new_run_cli(tmp_path):
    "training.resume_from_checkpoint=true in a new run folder would start afresh silently: the run stops and says to use --resume."
    runs = prior_runs(tmp_path/'runs'); before = snapshot(runs)
    p = dialsum('run', SMOKE, f'output.runs_dir={runs}', 'training.resume_from_checkpoint=true')
    assert p.returncode == 1 and 'Traceback' not in p.stderr, p.stdout + p.stderr
    (run,) = [r for r in run_folders(runs) if r.name != 'old_20260101-000000']
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'failed' and md['error'].startswith('ConfigError: '), md.get('error')
    for s in [f'{run}: training.resume_from_checkpoint is true, but there is nothing to resume in this folder',
              'use `dialsum run CONFIG --resume RUN`', 'set training.resume_from_checkpoint: null to start afresh']:
        assert s in md['error'], (s, md['error'])
    assert not list(run.glob('checkpoints/checkpoint-*')) and 'train' not in md and not (run/'submission.csv').exists()
    assert_kept(runs, before)
    record('cfg-resume-in-a-new-run', 'Configs', 'override training.resume_from_checkpoint=true for a new run (dialsum run, no --resume)',
           'refused', 'exit 1 before training', md['error'], tmp_path)


# ---------------------------------------------------------------------------------------------- models

TEXTS = [TRAIN, DEV, TEST] * 3


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
    "A complete tiny model folder (64 positions), built once for the model cases."
    from dialsum.models import build_scratch_model
    spec = ScratchModel(vocab_size=300, d_model=16, encoder_layers=1, decoder_layers=1, attention_heads=2, ffn_dim=16,
                        max_position_embeddings=64)
    return build_scratch_model(TEXTS, spec, tmp_path_factory.mktemp('tiny')/'model')


def _copy(src, dst, skip=()):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*skip)); return dst

def _truncate(d):
    w = d/'model.safetensors'; w.write_bytes(w.read_bytes()[:len(w.read_bytes()) // 2]); return d

def _adapter(d):
    d.mkdir(parents=True)
    (d/'adapter_config.json').write_text(json.dumps({'peft_type': 'LORA', 'base_model_name_or_path': '/gone/base'}))
    from safetensors.numpy import save_file
    import numpy as np
    save_file({'lora_A': np.zeros((2, 4), dtype=np.float32)}, str(d/'adapter_model.safetensors'))
    return d

def _pickle_only(tiny, d):
    import torch
    from safetensors.torch import load_file
    _copy(tiny, d, skip=('model.safetensors',))
    torch.save(load_file(str(tiny/'model.safetensors')), d/'pytorch_model.bin')
    return d

def _torn_run(tiny, run):
    "A run folder whose only checkpoint was being written when the job died: config and half the weights."
    ck = run/'checkpoints'/'checkpoint-10'; ck.mkdir(parents=True)
    shutil.copy(tiny/'config.json', ck)
    (ck/'model.safetensors').write_bytes((tiny/'model.safetensors').read_bytes()[:3000])
    return run


MODEL_CASES = [
    ('model-missing-dir', 'model.name_or_path: models/missing_model (no such folder, offline)',
     lambda tiny, d: dict(cfg=ModelConfig(name_or_path='models/missing_model')),
     ['cannot reach the model hub for models/missing_model (offline?)', 'set model.name_or_path to its local directory', 'no folder']),
    ('model-missing-tokenizer', 'a model folder without tokenizer files',
     lambda tiny, d: dict(cfg=ModelConfig(name_or_path=str(_copy(tiny, d/'m', skip=('tokenizer*',))))),
     ['m: no tokenizer files', 'save the tokenizer there with tokenizer.save_pretrained']),
    ('model-truncated-safetensors', 'a model folder whose model.safetensors was cut in half',
     lambda tiny, d: dict(cfg=ModelConfig(name_or_path=str(_truncate(_copy(tiny, d/'m'))))),
     ['model.safetensors: corrupt or truncated safetensors file', 'copy or download it again']),
    ('model-adapter-without-base', 'a PEFT adapter folder whose base model /gone/base does not exist',
     lambda tiny, d: dict(cfg=ModelConfig(name_or_path=str(_adapter(d/'adapter')))),
     ["a PEFT adapter (adapter_config.json), not a whole model, and its base model '/gone/base' is not found",
      "set model.name_or_path to the base model's folder"]),
    ('model-pickle-only', 'a model folder with only pytorch_model.bin (pickle)',
     lambda tiny, d: dict(cfg=ModelConfig(name_or_path=str(_pickle_only(tiny, d/'m')))),
     ['has only pickle weights (pytorch_model.bin), which can run code when loaded', 'model.allow_pickle: true']),
    ('model-corrupt-config', 'a model folder whose config.json is cut off',
     lambda tiny, d: dict(cfg=ModelConfig(name_or_path=str(_copy(tiny, d/'m'))), before=lambda: (d/'m'/'config.json').write_text('{"model_type": ')),
     ['config.json: not valid JSON', 'save the model there again']),
    ('model-encoder-above-positions', 'model.max_source_length 128 for a model folder with 64 positions',
     lambda tiny, d: dict(cfg=ModelConfig(name_or_path=str(tiny), max_source_length=128)),
     ["model.max_source_length (128) is above the model's max_position_embeddings (64)", 'lower it to 64 or less']),
    ('model-path-is-a-file', 'model.name_or_path naming a file',
     lambda tiny, d: dict(cfg=ModelConfig(name_or_path=str(tiny/'config.json'))), ['is a file, not a model folder', 'give the folder that holds config.json']),
]


@pytest.mark.parametrize('case_id,given,make,expect', MODEL_CASES, ids=[c[0] for c in MODEL_CASES])
def test_model_refused(case_id, given, make, expect, tiny, tmp_path):
    from dialsum.models import ModelError, load_model
    spec = make(tiny, tmp_path)
    if 'before' in spec: spec['before']()
    refused(lambda: load_model(spec['cfg'], [], tmp_path/'run', tmp_path), ModelError, expect, tmp_path, case_id, 'Models', given)


def test_no_complete_checkpoint(tiny, tmp_path):
    from dialsum.runs import CheckpointError
    from dialsum.checkpoints import find_checkpoint
    run = _torn_run(tiny, tmp_path/'run')
    refused(lambda: find_checkpoint(run), CheckpointError, ['checkpoints: no complete checkpoint: checkpoint-10: corrupt model.safetensors', '--checkpoint'],
            tmp_path, 'model-no-complete-checkpoint', 'Models', 'a run whose only checkpoint was torn by a kill while saving')


def test_resume_skips_a_torn_checkpoint(tiny, tmp_path):
    "Accepted by design: resuming takes the newest complete checkpoint and passes over the torn one."
    from dialsum.checkpoints import resume_point
    run = _torn_run(tiny, tmp_path/'run')
    done = _copy(tiny, run/'checkpoints'/'checkpoint-5')
    (done/'trainer_state.json').write_text(json.dumps({'global_step': 5, 'log_history': []}))
    shutil.rmtree(run/'checkpoints'/'checkpoint-10'); _torn_run(tiny, run)
    assert resume_point(run/'checkpoints', True) == done
    record('model-resume-torn-checkpoint', 'Models', 'resume a run whose newest checkpoint (10) is torn and checkpoint-5 is complete',
           'accepted', 'accepted', 'training.resume_from_checkpoint: true resumes from checkpoint-5; checkpoint-10 is passed over')


# ---------------------------------------------------------------------------------------------- output

def test_runs_dir_not_writable(tmp_path):
    from dialsum.runs import new_run_dir
    from dialsum.files import WriteError
    runs = prior_runs(tmp_path/'runs')
    if os.geteuid() != 0:
        runs.chmod(0o555)
        ctx = contextlib.nullcontext()
    else:  # root writes anywhere: the folder's refusal is simulated
        ctx = mock.patch('os.mkdir', side_effect=PermissionError(errno.EACCES, 'Permission denied'))
    try:
        with ctx:
            refused(lambda: new_run_dir(runs, 'smoke'), WriteError, ['cannot write it (Permission denied)', 'make it writable for this user'],
                    runs, 'out-runs-dir-not-writable', 'Output', 'output.runs_dir is a folder this user cannot write')
    finally: runs.chmod(0o755)


def test_runs_dir_is_a_file_cli(tmp_path):
    blocker = tmp_path/'runs'; blocker.write_text('not a folder')
    p = dialsum('run', SMOKE, f'output.runs_dir={blocker}', timeout=120)
    assert p.returncode == 2 and 'Traceback' not in p.stderr, p.stderr
    assert f'{blocker}: cannot write it' in p.stderr and 'a file stands where a folder is needed' in p.stderr, p.stderr
    assert blocker.read_text() == 'not a folder'
    record('out-runs-dir-is-a-file', 'Output', 'output.runs_dir naming an existing file (dialsum run)', 'refused', 'exit 2',
           p.stderr.removeprefix('error: '), tmp_path)


def _enospc(*a, **k): raise OSError(errno.ENOSPC, 'No space left on device')


def test_disk_full_while_writing_the_index(tmp_path):
    from dialsum.files import WriteError
    from dialsum.submissions import update_index
    runs = prior_runs(tmp_path/'runs')
    with mock.patch('os.fsync', _enospc):
        refused(lambda: update_index(runs, dict(run_id='new_20260102-000000', experiment='new', status='completed')), WriteError,
                ['index.csv: cannot write it (No space left on device)', 'free disk space'], runs,
                'out-disk-full-index', 'Output', 'the disk fills up while the index is written')


def test_disk_full_while_promoting(tmp_path):
    from dialsum.files import WriteError
    from dialsum.submissions import promote
    runs = prior_runs(tmp_path/'runs')
    run = runs/'new_20260102-000000'; run.mkdir()
    (run/'metadata.json').write_text(json.dumps({'run_id': run.name, 'status': 'completed'}))
    (run/'submission.csv').write_text('fname,summary\ntest_0,새 요약.\ntest_1,또 다른 요약.\n', encoding='utf-8')
    before = snapshot(runs)
    with mock.patch('os.fsync', _enospc), pytest.raises(WriteError) as e:
        promote(run, runs, ['test_0', 'test_1'])
    assert 'cannot write it (No space left on device); free disk space' in str(e.value)
    assert not (runs/'history'/f'{run.name}.csv').exists()
    assert_kept(runs, before)
    record('out-disk-full-promote', 'Output', 'the disk fills up while a valid submission is promoted', 'refused', 'WriteError',
           str(e.value) + ' (latest_submission.csv and history/ unchanged)', tmp_path)


def test_disk_too_small_for_the_checkpoints_cli(tmp_path):
    "The run stops before training with the numbers; no checkpoint is written and nothing is promoted."
    runs = prior_runs(tmp_path/'runs'); before = snapshot(runs)
    p = dialsum('run', SMOKE, f'output.runs_dir={runs}', 'training.max_steps=10000000', 'training.eval_steps=1',
                'training.save_total_limit=1000000')
    assert p.returncode == 1, p.stdout + p.stderr
    (run,) = [r for r in run_folders(runs) if r.name != 'old_20260101-000000']
    md = json.loads((run/'metadata.json').read_text())
    assert md['status'] == 'failed' and md['error'].startswith('DiskSpaceError: '), md.get('error')
    for s in ['not enough disk space for the checkpoints: about', 'checkpoints on disk at once x', 'parameters x 4 bytes x (1 + 2 optimizer states)',
              'GB free', 'lower training.save_total_limit', 'resources.check_disk: false']:
        assert s in md['error'], (s, md['error'])
    assert not (run/'checkpoints').exists() and 'train' not in md
    assert_kept(runs, before)
    record('out-disk-too-small', 'Output', 'save_total_limit x checkpoint size larger than the free disk (dialsum run)', 'refused',
           'exit 1 before training', md['error'], tmp_path)


def test_run_name_collision(tmp_path):
    "Accepted by design: a second run of an experiment in the same second gets its own folder; the first is untouched."
    from datetime import datetime
    from dialsum.runs import new_run_dir
    t = datetime(2026, 1, 2, 3, 4, 5)
    first = new_run_dir(tmp_path, 'demo', t); (first/'metadata.json').write_text('{"run_id": "first"}')
    before = snapshot(first)
    second = new_run_dir(tmp_path, 'demo', t)
    assert (first.name, second.name) == ('demo_20260102-030405', 'demo_20260102-030405-2') and snapshot(first) == before
    record('out-name-collision-run', 'Output', 'two runs of one experiment started in the same second', 'accepted', 'accepted',
           f'folders {first.name} and {second.name}')


def test_history_name_collision(tmp_path):
    "Accepted by design: promoting a run again keeps the first history file and adds -2."
    from dialsum.submissions import promote
    runs = prior_runs(tmp_path/'runs')
    run = runs/'new_20260102-000000'; run.mkdir()
    (run/'metadata.json').write_text(json.dumps({'run_id': run.name, 'status': 'completed'}))
    (run/'submission.csv').write_text('fname,summary\ntest_0,새 요약.\ntest_1,또 다른 요약.\n', encoding='utf-8')
    first = promote(run, runs, ['test_0', 'test_1'])['history_path']
    kept = (runs/'history'/f'{run.name}.csv').read_bytes()
    second = promote(run, runs, ['test_0', 'test_1'])['history_path']
    assert Path(first).name == f'{run.name}.csv' and Path(second).name == f'{run.name}-2.csv'
    assert (runs/'history'/f'{run.name}.csv').read_bytes() == kept and (runs/'history'/f'{OLD}.csv').exists()
    record('out-name-collision-history', 'Output', 'the same run promoted twice', 'accepted', 'accepted',
           f'history/{Path(first).name} kept, the second copy is history/{Path(second).name}')


OLD = 'old_20260101-000000'


def test_index_with_a_foreign_schema(tmp_path):
    from dialsum.submissions import SubmissionError, update_index
    runs = tmp_path/'runs'; runs.mkdir()
    (runs/'index.csv').write_text('exp_name,score,time\nold,30.1,2025-12-01\n')
    refused(lambda: update_index(runs, dict(run_id='x_20260101-000000', status='completed')), SubmissionError,
            ['index.csv: its header is not the run index schema', 'Move it aside'], runs,
            'out-index-foreign-schema', 'Output', "runs/index.csv written by the old pipeline (another header)")


# ---------------------------------------------------------------------------------------------- normal forms and hashes

REF = '#Person1#은 #Person2#에게 내일 7시에 4명 자리를 예약해 달라고 한다.'


@pytest.mark.parametrize('case_id,given,ref', [
    ('metric-nfd-reference', 'a reference stored in NFD (decomposed Hangul), the prediction in NFC', unicodedata.normalize('NFD', REF)),
    ('metric-nul-at-start', 'a reference that starts with a NUL', '\x00' + REF),
    ('metric-nul-inside', 'a reference with a NUL in the middle (Mecab, a C library, stopped there)', REF[:12] + '\x00' + REF[12:]),
    ('metric-zero-width', 'a reference with zero-width spaces and a BOM between its words', REF.replace(' ', ' \u200b').replace('내일', '\ufeff내일')),
], ids=lambda v: v if isinstance(v, str) and v.startswith('metric-') else '')
def test_metric_ignores_the_stored_form(case_id, given, ref):
    "Accepted by design: a text scores as the text it looks like, whatever its normal form or invisible characters."
    from dialsum.metrics import competition_score, morphs
    same = competition_score([REF], [[REF]])['score']
    got = competition_score([REF], [[ref]])
    assert same > 99.99 and got['score'] == same, got
    assert morphs(ref) == morphs(REF)
    record(case_id, 'Metric', given, 'accepted', 'accepted', f"competition_score of the identical NFC prediction: {got['score']:.2f} "
           f"(rouge1 {got['rouge1']:.2f}, rouge2 {got['rouge2']:.2f}, rougeL {got['rougeL']:.2f}), as for the clean reference")


def test_config_hash_covers_what_changes_results():
    "Keys that do not change a run's result keep its hash (sweep --resume finds the run); every other key changes it."
    from dialsum.config import HASH_EXCLUDED, config_hash, load_config
    h = lambda *o: config_hash(load_config(SMOKE, list(o), check_machine=False))
    neutral = ['training.resume_from_checkpoint=true', 'generation.batch_size=3', "training.report_to=['tensorboard']",
               'training.dataloader_num_workers=2', 'training.logging_steps=1', 'training.per_device_eval_batch_size=1',
               'model.allow_pickle=true', 'output.runs_dir=elsewhere', 'resources.check_disk=false', 'resources.gpu_wait_seconds=5',
               'data.allow_overlap=true', 'data.cache_features=false',
               'tune={storage: runs/study.log, study: s, trial: 3}',  # which Optuna trial a run is (dialsum tune)
               'generation.drop_finished=false']
    assert {k.split('=')[0].rsplit('.', 1)[0] if k.startswith(('output', 'resources')) else k.split('=')[0] for k in neutral} == set(HASH_EXCLUDED)
    changed = ['training.seed=7', 'training.learning_rate=1e-3', 'training.max_steps=3', 'generation.num_beams=2',
               'generation.max_new_tokens=20', 'model.max_source_length=128', 'data.prefix=x', 'data.collapse_whitespace=false',
               'training.per_device_train_batch_size=2', 'training.gradient_accumulation_steps=2']
    base = h()
    assert [o for o in neutral if h(o) != base] == []
    assert [o for o in changed if h(o) == base] == []
    assert h('generation.do_sample=true', 'generation.batch_size=3') != h('generation.do_sample=true'), 'sampling seeds each batch'
    why = '; '.join(f'{k}: {v}' for k, v in HASH_EXCLUDED.items())
    record('cfg-hash-neutral-keys', 'Configs', 'the same config with ' + ', '.join(neutral), 'accepted', 'accepted',
           f"the same config_hash ({base}), so sweep --resume finds the run; left out of the hash: {why}. Any of "
           f"{', '.join(changed)} gives another hash")


def test_generation_batch_size_is_results_neutral(tiny):
    "What excluding generation.batch_size from the hash rests on: greedy and beam search give the same summaries at any batch size."
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    from dialsum.config import GenerationConfig
    from dialsum.inference import generate_summaries
    import torch
    tok, model = AutoTokenizer.from_pretrained(tiny), AutoModelForSeq2SeqLM.from_pretrained(tiny)
    torch.manual_seed(0)
    with torch.no_grad():  # large random weights: an untrained model whose output depends on its input
        for n, w in model.named_parameters():
            if 'norm' not in n: w.normal_(0, 1.0)
    sources = [t for text in (TRAIN, DEV, TEST) for t in text.split('\n')[1:] if t][:9]  # different lengths: padded batches
    for beams in (1, 3):
        outs = {bs: generate_summaries(model, tok, sources, GenerationConfig(num_beams=beams, max_new_tokens=12, batch_size=bs),
                                       max_source_length=64, progress=False) for bs in (1, 4, 9)}
        assert outs[1] == outs[4] == outs[9], (beams, outs)
        assert len(set(outs[1])) > 1  # the model says different things to different inputs


@pytest.mark.slow
def test_nfd_files_train_and_score_as_nfc_cli(tmp_path):
    "Accepted by design: the demo files saved in NFD (as macOS writes them) give the run the NFC files give: same dev score, same summaries."
    from dialsum.data import make_demo_data
    nfc = make_demo_data(tmp_path/'nfc', n_train=48, n_dev=8, n_test=8, seed=0)
    (tmp_path/'nfd').mkdir()
    for p in nfc.values(): (tmp_path/'nfd'/p.name).write_text(unicodedata.normalize('NFD', p.read_text(encoding='utf-8')), encoding='utf-8')
    assert (tmp_path/'nfd'/'dev.csv').read_bytes() != nfc['dev'].read_bytes()
    runs = prior_runs(tmp_path/'runs'); before = snapshot(runs/OLD), (runs/'history'/f'{OLD}.csv').read_bytes()
    got = {}
    for form in ('nfc', 'nfd'):
        d = tmp_path/form
        p = dialsum('run', SMOKE, f'output.runs_dir={runs}', 'data.demo=null', f'experiment=smoke_{form}',
                    *(f'data.{s}={d/f"{s}.csv"}' for s in ('train', 'dev', 'test', 'sample_submission')))
        assert p.returncode == 0, p.stdout + p.stderr
        (run,) = [r for r in run_folders(runs) if r.name.startswith(f'smoke_{form}_')]
        md = json.loads((run/'metadata.json').read_text())
        assert md['status'] == 'completed' and md['promoted'], md
        got[form] = (md['dev']['score'], (run/'predictions_dev.csv').read_text(encoding='utf-8'), (run/'submission.csv').read_text(encoding='utf-8'))
    assert got['nfd'] == got['nfc']
    assert unicodedata.is_normalized('NFC', got['nfd'][2])
    assert (snapshot(runs/OLD), (runs/'history'/f'{OLD}.csv').read_bytes()) == before  # the teammate's run is untouched
    record('csv-nfd-files-cli', 'CSV files', 'dialsum run on train, dev and test files saved in NFD (the demo data, decomposed)',
           'accepted', 'accepted', f"the same run as on the NFC files: dev score {got['nfd'][0]:.2f} both times, identical dev predictions "
           "and submission (before: an NFD dev.csv scored 0.00)")
