"""The pipeline end to end: sources, caching, the build lock, reports, and clear errors for bad data."""

import json
import multiprocessing
import os
import subprocess
import sys

import pytest

from kubetune.api import DatasetSpec
from kubetune.data.encode import TemplateMismatch
from kubetune.data.pipeline import build
from kubetune.data.source import DataError

ALPACA = [{"instruction": f"Task {i}", "input": "", "output": "done " * (i % 5 + 1)} for i in range(40)]


def spec(uri, **kw):
    base = dict(uri=str(uri), format="alpaca", prompt_template="internlm2_chat", max_length=64)
    base.update(kw)
    return DatasetSpec(**base)


def write_all_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.json").write_text(json.dumps(ALPACA))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in ALPACA) + "\n")
    table = pa.Table.from_pylist(ALPACA)
    pq.write_table(table, tmp_path / "a.parquet")
    with pa.OSFile(str(tmp_path / "a.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "part1.jsonl").write_text("\n".join(json.dumps(r) for r in ALPACA[:20]))
    (folder / "part2.jsonl").write_text("\n".join(json.dumps(r) for r in ALPACA[20:]))
    return ["a.json", "a.jsonl", "a.parquet", "a.arrow", "folder"]


def test_every_file_type_gives_the_same_sequences(tmp_path, tokenizer, cache_root):
    results = []
    for name in write_all_types(tmp_path):
        built = build(spec(tmp_path / name), tokenizer, cache_root=cache_root, log=lambda s: None)
        results.append(sorted(tuple(r) for r in built.dataset["input_ids"]))
        assert built.report["samples"] == 40
    assert all(r == results[0] for r in results)


def test_cache_is_reused_and_keyed_by_content(tmp_path, tokenizer, cache_root):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ALPACA))
    first = build(spec(path), tokenizer, cache_root=cache_root, log=lambda s: None)
    again = build(spec(path), tokenizer, cache_root=cache_root, log=lambda s: None)
    assert not first.from_cache and again.from_cache and again.path == first.path
    os.utime(path, (1, 1))  # touching the file changes nothing
    assert build(spec(path), tokenizer, cache_root=cache_root, log=lambda s: None).from_cache
    path.write_text(json.dumps(ALPACA[:-1]))
    changed = build(spec(path), tokenizer, cache_root=cache_root, log=lambda s: None)
    assert not changed.from_cache and changed.report["samples"] == 39
    other = build(spec(path, max_length=128), tokenizer, cache_root=cache_root, log=lambda s: None)
    assert other.path != changed.path


def _build_in_child(args):
    path, tiny, cache = args
    from transformers import AutoTokenizer

    from kubetune.api import DatasetSpec
    from kubetune.data.pipeline import build

    tok = AutoTokenizer.from_pretrained(tiny)
    spec_ = DatasetSpec(uri=path, format="alpaca", prompt_template="internlm2_chat", max_length=64)
    built = build(spec_, tok, cache_root=__import__("pathlib").Path(cache), log=lambda s: None)
    return built.from_cache, str(built.path)


def test_one_process_builds_while_the_others_wait(tmp_path, tiny_dir, cache_root):
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ALPACA * 20))
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        results = pool.map(_build_in_child, [(str(path), str(tiny_dir), str(cache_root))] * 3)
    assert sorted(r[0] for r in results) == [False, True, True]  # exactly one built it
    assert len({r[1] for r in results}) == 1
    assert not [p for p in cache_root.iterdir() if ".tmp-" in p.name]


def test_report_counts_truncation_drops_and_splits(tmp_path, tokenizer, cache_root):
    rows = ALPACA + [{"instruction": "x", "input": "", "output": "<nooutput>"},
                     {"instruction": "long " * 80, "input": "", "output": "y"}]
    path = tmp_path / "d.json"
    path.write_text(json.dumps(rows))
    lines = []
    packed = build(spec(path), tokenizer, cache_root=cache_root, log=lines.append)
    src = packed.report["sources"][0]
    assert src["rows"] == 42 and src["dropped_by_format"] == 1 and src["samples"] == 41
    assert packed.report["split"] == 1 and packed.report["truncated"] == 0
    assert any("split into pieces of maxLength" in line for line in lines)
    plain = build(spec(path, pack_to_max_length=False), tokenizer, cache_root=cache_root, log=lines.append)
    # Truncation cut the long sample's answer off, so it had nothing left to learn from: counted, then dropped.
    assert plain.report["truncated"] == 1 and plain.report["sources"][0]["dropped_no_loss"] == 1
    assert plain.report["sequences"] == 40
    assert max(len(r) for r in plain.dataset["input_ids"]) <= 64
    # Packing: tokens are conserved and every sequence fits.
    assert sum(sum(r) for r in packed.dataset["seq_lens"]) == packed.report["tokens"]
    assert all(len(r) <= 64 for r in packed.dataset["input_ids"])
    assert packed.report["padding_waste"] < packed.report["padding_waste_unpacked"]


def test_concat_max_samples_and_dataset_system(tmp_path, tokenizer, cache_root):
    (tmp_path / "a.json").write_text(json.dumps(ALPACA))
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"question": f"q{i}", "response": "r"}) for i in range(10)))
    s = spec(tmp_path / "a.json", max_samples=5, system="SYS-PROMPT",
             concat=[{"uri": str(tmp_path / "b.jsonl"), "format": "stack_exchange"}], pack_to_max_length=False)
    built = build(s, tokenizer, cache_root=cache_root, log=lambda s: None)
    assert [x["samples"] for x in built.report["sources"]] == [5, 10]
    texts = [tokenizer.decode(r) for r in built.dataset["input_ids"]]
    assert sum("SYS-PROMPT" in t for t in texts) == 5


@pytest.mark.parametrize("content,message", [
    (b'{"instruction": "a", "input": "", "output": "b"}\n{"instruction": oops}\n', "line 2: not valid JSON"),
    (b'{"instruction": "a", "input": "", "output": "\xff\xfe"}\n', "line 1: not valid UTF-8"),
    (b'{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "input": ""}\n', "row 1: output: missing"),
    (b'{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "input": "", "output": ["x"]}\n',
     "row 1: output: expected text, got list"),
    (b'{"instruction": "a", "input": "", "output": "b"}\n{"instruction": "a", "input": "", "output": 5}\n',
     "row 1: output: expected text, got int"),
])
def test_bad_data_names_file_row_and_field(tmp_path, tokenizer, cache_root, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        build(spec(path), tokenizer, cache_root=cache_root, log=lambda s: None)
    assert message in str(err.value) and "bad.jsonl" in str(err.value)
    # Nothing half-written: no cache entry and no temporary directory is left behind.
    assert not cache_root.exists() or not [p for p in cache_root.iterdir() if p.is_dir()]


def test_missing_source_and_unknown_scheme(tmp_path, tokenizer, cache_root, monkeypatch):
    with pytest.raises(DataError, match="no such file"):
        build(spec(tmp_path / "nope.json"), tokenizer, cache_root=cache_root)
    from kubetune.storage import s3

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setattr(s3, "_CLIENT", {})
    with pytest.raises(DataError, match="s3://bucket/d.json: no S3 credentials found"):
        build(spec("s3://bucket/d.json"), tokenizer, cache_root=cache_root)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .json"):
        build(spec(tmp_path / "empty"), tokenizer, cache_root=cache_root)


def test_template_that_does_not_fit_the_tokenizer(tmp_path, tiny_dir, cache_root):
    from transformers import AutoTokenizer

    from kubetune.tiny import build_tokenizer  # noqa: F401  (the tiny tokenizer knows every template's markers)

    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.backend_tokenizer.add_special_tokens([])  # unchanged; now build one that lacks <|eot_id|>
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    from tokenizers import trainers

    raw.train_from_iterator(["hello world"] * 3, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    plain = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")
    path = tmp_path / "d.json"
    path.write_text(json.dumps(ALPACA))
    with pytest.raises(TemplateMismatch, match="llama3_chat"):
        build(spec(path, prompt_template="llama3_chat"), plain, cache_root=cache_root)


def test_hf_dataset_from_a_local_hub_cache(tmp_path, tiny_dir):
    """hf:// goes through huggingface_hub; offline it reads the local cache (a copy laid out like a download)."""
    hub = tmp_path / "hub"
    snap = hub / "datasets--acme--tiny-alpaca" / "snapshots" / "0123456789abcdef"
    snap.mkdir(parents=True)
    (snap / "train.jsonl").write_text("\n".join(json.dumps(r) for r in ALPACA))
    (hub / "datasets--acme--tiny-alpaca" / "refs").mkdir()
    (hub / "datasets--acme--tiny-alpaca" / "refs" / "main").write_text("0123456789abcdef")
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps({"model": {"uri": str(tiny_dir)}, "dataset": {
        "uri": "hf://acme/tiny-alpaca", "format": "alpaca", "promptTemplate": "internlm2_chat", "maxLength": 64}}))
    env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1", KUBETUNE_CACHE=str(tmp_path / "kc"))
    out = subprocess.run([sys.executable, "-m", "kubetune", "log-dataset", str(cfg)], capture_output=True, text=True,
                         env=env)
    assert out.returncode == 0, out.stderr
    assert "Num train sequences" in out.stdout
    missing = subprocess.run([sys.executable, "-m", "kubetune", "log-dataset", str(cfg), "--cfg-options",
                              "dataset.uri=hf://acme/absent"], capture_output=True, text=True, env=env)
    assert missing.returncode == 2 and "not in the local Hugging Face cache" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_vectorised_gather_equals_naive_concatenation():
    import datasets

    from kubetune.data.pack import pack
    from kubetune.data.pipeline import gather

    rng = __import__("random").Random(3)
    rows = [[rng.randint(0, 999) for _ in range(rng.randint(1, 50))] for _ in range(300)]
    data = datasets.Dataset.from_dict({"input_ids": rows, "labels": [[-x for x in r] for r in rows]})
    sequences = pack([len(r) for r in rows], 64, seed=1)
    data = datasets.concatenate_datasets([data.select(range(150)), data.select(range(150, 300))])  # several chunks
    path = __import__("pathlib").Path(__import__("tempfile").mkdtemp()) / "d.arrow"
    gather(data, sequences, path, chunk=17)
    got = datasets.Dataset.from_file(str(path))
    assert len(got) == len(sequences)
    for seq, row in zip(sequences, got):
        assert row["input_ids"] == [t for idx, s, e in seq for t in rows[idx][s:e]]
        assert row["labels"] == [-t for t in row["input_ids"]]
        assert row["seq_lens"] == [e - s for _, s, e in seq]


@pytest.mark.parametrize("block", [7, 64, 1 << 20])
def test_json_arrays_are_streamed_to_json_lines(tmp_path, block):
    from kubetune.data.source import _as_json_lines

    rows = [{"a": 12345678, "b": "x]y,[z", "c": [1, [2, 3]], "d": None}, {"a": -1.5e3, "b": "é\n", "c": [], "d": True}]
    path = tmp_path / "rows.json"
    path.write_text(" \n[\n" + ",\n".join(json.dumps(r) for r in rows) + "\n]\n")
    out = _as_json_lines(path, tmp_path / "work", block=block)
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


@pytest.mark.parametrize("text,message", [
    ('[{"a": 1},\n{"a": oops}]', "line 2: not valid JSON"),
    ('[{"a": 1}, 5]', "row 1: expected an object"),
    ('[{"a": 1},\n{"a": 2}', "not closed"),
])
def test_json_array_errors_name_the_line(tmp_path, text, message):
    from kubetune.data.source import _as_json_lines

    path = tmp_path / "rows.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        _as_json_lines(path, tmp_path / "work", block=8)


def test_parallel_preprocessing_gives_the_same_sequences(tmp_path, tokenizer):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in ALPACA * 60) + "\n")  # 2400 rows: enough for 2 workers
    one = build(spec(path, num_proc=1), tokenizer, cache_root=tmp_path / "c1", log=lambda s: None)
    two = build(spec(path, num_proc=2), tokenizer, cache_root=tmp_path / "c2", log=lambda s: None)
    assert one.report == two.report
    assert one.dataset["input_ids"][:] == two.dataset["input_ids"][:]
    assert one.dataset["labels"][:] == two.dataset["labels"][:]
