"""convert pth_to_hf / merge / split on tiny models: outputs load in plain transformers/peft, the streaming merge
equals PEFT's merge_and_unload tensor by tensor, and merged logits equal the adapter's."""

import json

import pytest
import torch
from safetensors.torch import load_file

from .test_train import alpaca_rows, kubetune, write_job


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_dir):
    """A LoRA run (all linear layers, rsLoRA off, r=8) and a full run, 4 steps each."""
    tmp = tmp_path_factory.mktemp("trained")
    runs = {}
    for method in ("lora", "full"):
        job = write_job(tmp / method, tiny_dir, alpaca_rows(8)) if (tmp / method).mkdir() is None else None
        over = ["training.maxSteps=4", "checkpoints.everySteps=4"]
        if method == "full":
            over += ["method.type=full", "method.lora=null"]
        else:
            over += ["method.lora.targetModules=[]"]
        out = kubetune("train", str(job), "--work-dir", str(tmp / method / "w"), "--cfg-options", *over,
                       env={"KUBETUNE_CACHE": str(tmp / "c")})
        assert out.returncode == 0, out.stderr[-3000:]
        runs[method] = (job, tmp / method / "w" / "iter_4")
    return runs


def sharded_base(tiny_dir, out, safe=True):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    model.save_pretrained(out, max_shard_size="200KB")
    AutoTokenizer.from_pretrained(str(tiny_dir)).save_pretrained(out)
    if not safe:  # transformers 5 writes only safetensors: make the PyTorch .bin layout older checkpoints have
        index = json.loads((out / "model.safetensors.index.json").read_text())
        names = {}
        for shard in sorted(set(index["weight_map"].values())):
            torch.save(load_file(str(out / shard)), out / shard.replace("model", "pytorch_model").replace(
                ".safetensors", ".bin"))
            names[shard] = shard.replace("model", "pytorch_model").replace(".safetensors", ".bin")
            (out / shard).unlink()
        index["weight_map"] = {k: names[v] for k, v in index["weight_map"].items()}
        (out / "pytorch_model.bin.index.json").write_text(json.dumps(index))
        (out / "model.safetensors.index.json").unlink()
    return out


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_pth_to_hf_adapter_and_full_model_load_in_plain_libraries(trained, tmp_path, tiny_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    job, ckpt = trained["lora"]
    out = kubetune("convert", "pth_to_hf", str(job), str(ckpt), str(tmp_path / "adapter"))
    assert out.returncode == 0, out.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "adapter").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors", "kubetune_config.yaml"]
    assert all(t.dtype == torch.float16 for t in load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
               .values())
    base = AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32)
    PeftModel.from_pretrained(base, str(tmp_path / "adapter"))

    job, ckpt = trained["full"]
    out = kubetune("convert", "pth_to_hf", str(job), str(ckpt), str(tmp_path / "full"), "--fp32",
                   "--max-shard-size", "300KB")
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "full" / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "full"))
    AutoTokenizer.from_pretrained(str(tmp_path / "full"))
    trained_weights = load_file(str(ckpt / "model" / "model.safetensors"))
    for key, value in model.state_dict().items():
        assert torch.equal(value, trained_weights[key]), key
    bad = kubetune("convert", "pth_to_hf", str(job), str(tmp_path), str(tmp_path / "x"))
    assert bad.returncode == 2 and "not a kubetune checkpoint" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.parametrize("safe", [True, False])
def test_streaming_merge_equals_peft_merge_and_the_adapter(trained, tmp_path, tiny_dir, safe):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = sharded_base(tiny_dir, tmp_path / "base", safe=safe)
    assert len(list(base.glob("*.safetensors" if safe else "*.bin"))) >= 3
    _, ckpt = trained["lora"]
    adapter = ckpt / "model"
    out = kubetune("convert", "merge", str(base), str(adapter), str(tmp_path / "merged"), "--max-shard-size", "250KB")
    assert out.returncode == 0, out.stderr[-2000:]
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)

    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(tiny_dir), dtype=torch.float32),
                                          str(adapter))
    ids = torch.tensor([[1, 5, 9, 13, 40, 2]])
    adapter_logits = logits(reference, ids)
    peft_merged = reference.merge_and_unload()
    ours = merged.state_dict()
    for key, value in peft_merged.state_dict().items():
        assert torch.allclose(ours[key], value, atol=1e-6, rtol=0), key
    assert torch.allclose(logits(merged, ids), adapter_logits, atol=1e-5)
    assert (tmp_path / "merged" / "tokenizer.json").is_file()


def test_merge_refuses_an_adapter_of_another_model(trained, tmp_path, tiny_dir):
    from kubetune.tiny import build

    other = build(tmp_path / "other", hidden_size=32, intermediate_size=64, num_hidden_layers=1)
    _, ckpt = trained["lora"]
    out = kubetune("convert", "merge", str(other), str(ckpt / "model"), str(tmp_path / "m"))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("safe", [True, False])
def test_split_puts_each_tensor_in_its_own_shard(tmp_path, tiny_dir, safe):
    from transformers import AutoModelForCausalLM

    base = sharded_base(tiny_dir, tmp_path / "base", safe=safe)
    out = kubetune("convert", "split", str(base), str(tmp_path / "split"))
    assert out.returncode == 0, out.stderr[-2000:]
    ext = "safetensors" if safe else "bin"
    index = json.loads((tmp_path / "split" / f"{'model' if safe else 'pytorch_model'}.{ext}.index.json").read_text())
    assert len(set(index["weight_map"].values())) == len(index["weight_map"])
    a = AutoModelForCausalLM.from_pretrained(str(base)).state_dict()
    b = AutoModelForCausalLM.from_pretrained(str(tmp_path / "split")).state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), key
