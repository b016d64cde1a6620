"""check-custom-dataset, log-dataset and preprocess arxiv, run as a user runs them."""

import json

import pytest

from .conftest import REPO


@pytest.fixture
def env_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBETUNE_CACHE", str(tmp_path / "kcache"))
    return tmp_path


@pytest.mark.parametrize("example", ["local-alpaca.yaml", "finetune-local-tiny.yaml"])
def test_check_custom_dataset_on_examples(cli, example, env_cache):
    out = cli("check-custom-dataset", f"examples/{example}")
    assert out.returncode == 0, out.stderr
    for title in ("dataset after dataset_map_fn", "dataset after adding templates", "encoded input_ids",
                  "encoded labels", "input_ids after packed to max_length", "labels after packed to max_length"):
        assert title in out.stdout
    assert "are usable" in out.stdout


@pytest.mark.parametrize("example", ["local-alpaca.yaml", "finetune-local-tiny.yaml"])
def test_log_dataset_on_examples(cli, example, env_cache):
    out = cli("log-dataset", f"examples/{example}", "--show", "all")
    assert out.returncode == 0, out.stderr
    assert "Num train sequences" in out.stdout
    for title in ("= text =", "= masked_text =", "= input_ids =", "= labels ="):
        assert title in out.stdout
    assert "[-100]×" in out.stdout
    assert "padding waste" in out.stdout or "padding waste" in out.stderr


def test_check_custom_dataset_lists_bad_rows(cli, tmp_path):
    data = tmp_path / "rows.jsonl"
    rows = [{"instruction": "a", "input": "", "output": "b"}, {"instruction": "a", "input": ""},
            {"instruction": "c", "input": "", "output": "d"}, {"instruction": "e", "input": ""}]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = tmp_path / "job.yaml"
    cfg.write_text(json.dumps({"model": {"uri": str(REPO / "examples/models/tiny-chat")},
                               "dataset": {"uri": "rows.jsonl", "format": "alpaca", "promptTemplate": "internlm2_chat"}}))
    out = cli("check-custom-dataset", str(cfg))
    assert out.returncode == 2
    assert "rows.jsonl: row 1: output: missing" in out.stdout and "row 3: output: missing" in out.stdout
    assert "2 row(s) cannot be used" in out.stderr and "Traceback" not in out.stderr


def test_wrong_format_name_and_missing_model(cli, tmp_path):
    out = cli("check-custom-dataset", "examples/local-alpaca.yaml", "--cfg-options", "dataset.format=alpacca")
    assert out.returncode == 2 and "spec.dataset.format" in out.stderr
    out = cli("check-custom-dataset", "examples/local-alpaca.yaml", "--cfg-options", "model.uri=/nope/model")
    assert out.returncode == 2 and "/nope/model" in out.stderr and "Traceback" not in out.stderr


def test_template_mismatch_is_a_clean_error(cli, tmp_path):
    from kubetune.tiny import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = None
    tok.save_pretrained(tmp_path / "tok")
    out = cli("check-custom-dataset", "examples/local-alpaca.yaml", "--cfg-options", f"model.uri={tmp_path / 'tok'}",
              "dataset.promptTemplate=auto")
    assert out.returncode == 2 and "chat_template" in out.stderr and "Traceback" not in out.stderr


def test_preprocess_arxiv(cli, tmp_path):
    src = tmp_path / "arxiv.jsonl"
    papers = [
        {"id": "1", "title": "A", "abstract": "x", "categories": "cs.CL stat.ML", "update_date": "2021-05-01"},
        {"id": "2", "title": "B", "abstract": "y", "categories": "math.AG", "update_date": "2022-01-01"},
        {"id": "3", "title": "C", "abstract": "z", "categories": "cs.CV", "update_date": "2019-12-31"},
        {"id": "4", "title": "D", "abstract": "w", "categories": "cs.AI", "update_date": "2020-01-01"},
    ]
    src.write_text("\n".join(json.dumps(p) for p in papers) + "\n")
    dst = tmp_path / "out" / "arxiv.json"
    out = cli("preprocess", "arxiv", str(src), str(dst), "--start-date", "2020-01-01")
    assert out.returncode == 0, out.stderr
    kept = json.loads(dst.read_text())
    assert [p["id"] for p in kept] == ["1", "4"]
    assert "wrote 2 papers" in out.stdout
    only_cv = cli("preprocess", "arxiv", str(src), str(dst), "--categories", "cs.CV", "--start-date", "2019-01-01")
    assert only_cv.returncode == 0 and [p["id"] for p in json.loads(dst.read_text())] == ["3"]
    src.write_text(src.read_text() + "{broken\n")
    before = dst.read_text()
    bad = cli("preprocess", "arxiv", str(src), str(dst))
    assert bad.returncode == 2 and "line 5: not valid JSON" in bad.stderr
    assert dst.read_text() == before  # nothing half-written
    assert cli("preprocess", "arxiv", str(src), str(dst), "--start-date", "2020/01/01").returncode == 2
