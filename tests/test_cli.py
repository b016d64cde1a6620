"""The `kubetune` command line: help on every mode, exit codes, list-cfg/copy-cfg, --cfg-options, start-up cost."""

import subprocess
import sys

import pytest
import yaml

from kubetune.api import load_manifest
from kubetune.cli.main import MODES, main

from .conftest import REPO

SUBMODES = {"convert": ["pth_to_hf", "merge", "split"], "preprocess": ["arxiv", "refcoco"]}


def test_help_lists_every_mode(cli):
    for args in (["help"], ["--help"], ["-h"]):
        out = cli(*args)
        assert out.returncode == 0
        for mode in MODES:
            assert mode in out.stdout
    assert cli().returncode == 2  # no mode at all is a usage error, after printing the help


@pytest.mark.parametrize("mode", list(MODES))
def test_every_mode_has_help(mode, capsys):
    with pytest.raises(SystemExit) as exc:
        main([mode, "-h"])
    assert exc.value.code == 0
    assert "usage: kubetune" in capsys.readouterr().out
    for sub in SUBMODES.get(mode, []):
        with pytest.raises(SystemExit) as exc:
            main([mode, sub, "-h"])
        assert exc.value.code == 0


def test_version(cli):
    from kubetune import __version__

    for args in (["version"], ["-v"], ["--version"]):
        out = cli(*args)
        assert out.returncode == 0 and out.stdout.strip() == __version__


def test_list_cfg_seed_example(cli):
    out = cli("list-cfg", "-p", "internlm2_chat_1_8b")
    assert out.returncode == 0
    lines = out.stdout.splitlines()
    assert lines[0] == "==========================CONFIGS==========================="
    assert lines[1] == "PATTERN: internlm2_chat_1_8b"
    assert lines[2] == "-------------------------------"
    assert lines[-1] == "============================================================="
    assert "internlm2_chat_1_8b_full_alpaca_e3" in lines
    assert "internlm2_chat_1_8b_qlora_alpaca_e3" in lines
    assert all("internlm2_chat_1_8b" in line for line in lines[3:-1])
    everything = cli("list-cfg").stdout.splitlines()
    assert not everything[1].startswith("PATTERN") and len(everything) > 1000


def test_list_cfg_pattern_is_case_insensitive(capsys):
    assert main(["list-cfg", "-p", "QWEN2_5_7B_INSTRUCT_QLORA_ALPACA_E3"]) == 0
    assert "qwen2_5_7b_instruct_qlora_alpaca_e3" in capsys.readouterr().out


def test_copy_cfg_seed_example(tmp_path, cli):
    out = cli("copy-cfg", "internlm2_chat_1_8b_qlora_alpaca_e3", "./", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "Copy to ./internlm2_chat_1_8b_qlora_alpaca_e3_copy.yaml"
    path = tmp_path / "internlm2_chat_1_8b_qlora_alpaca_e3_copy.yaml"
    doc = yaml.safe_load(path.read_text())
    assert doc["apiVersion"] == "kubetune.io/v1alpha1" and doc["kind"] == "FineTuneJob"
    assert doc["metadata"]["name"] == "internlm2-chat-1-8b-qlora-alpaca-e3"
    job = load_manifest(path)
    assert job.spec.method.type == "qlora"
    assert "# Rank of the update matrices." in path.read_text()  # field docs travel with the copy
    # InternLM2 ships its own modelling code: the copy turns trustRemoteCode on, and says so (issue 26).
    assert doc["spec"]["model"]["trustRemoteCode"] is True
    assert "note: model.trustRemoteCode is true" in out.stderr
    checked = cli("validate", str(path))
    assert checked.returncode == 0 and "note: model.trustRemoteCode is true" in checked.stderr
    plain = cli("copy-cfg", "mistral_7b_qlora_alpaca_e3", "./", cwd=tmp_path)  # kubetune's own: off
    assert plain.returncode == 0 and "trustRemoteCode" not in plain.stderr


def test_copy_cfg_unknown_name(tmp_path, cli):
    out = cli("copy-cfg", "internlm2_chat_1_8b_qlora_alpaka_e3", str(tmp_path))
    assert out.returncode == 2
    assert "did you mean internlm2_chat_1_8b_qlora_alpaca_e3" in out.stderr
    assert "Traceback" not in out.stderr


def test_train_missing_file_is_one_line(cli):
    out = cli("train", "does-not-exist.yaml")
    assert out.returncode != 0
    assert out.stdout == ""
    assert len(out.stderr.strip().splitlines()) == 1
    assert "does-not-exist.yaml" in out.stderr and "Traceback" not in out.stderr


def test_train_bad_manifest_lists_every_field(tmp_path, cli):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({
        "apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob", "metadata": {"name": "bad"},
        "spec": {"model": {"uri": "m"}, "dataset": {"uri": "d"},
                 "method": {"type": "qlora", "quantization": {"bits": 8}},
                 "training": {"deepspeed": "zero3_offload", "maxEpochs": 3, "maxSteps": 10}}}))
    out = cli("train", str(bad))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    for field in ("spec.method.quantization.bits", "spec.training.deepspeed", "spec.training.maxEpochs",
                  "spec.training.maxSteps"):
        assert field in out.stderr


@pytest.mark.parametrize("content,message", [
    ("spec: [1, 2", "not valid YAML"),
    ("- a\n- b\n", "expected a mapping"),
    ("a: 1\n---\nb: 2\n", "exactly one document"),
])
def test_unreadable_files_are_clear(tmp_path, cli, content, message):
    path = tmp_path / "x.yaml"
    path.write_text(content)
    out = cli("validate", str(path))
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr


def test_train_a_hub_model_offline_is_a_clear_error(cli, tmp_path):
    import os

    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"))
    out = subprocess.run([sys.executable, "-m", "kubetune", "train", "internlm2_chat_1_8b_qlora_alpaca_e3",
                          "--cfg-options", "training.maxSteps=5", "training.precision=fp32",
                          "--work-dir", str(tmp_path / "w")],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "hf://internlm/internlm2-chat-1_8b" in out.stderr
    assert "Traceback" not in out.stderr
    ds = subprocess.run([sys.executable, "-m", "kubetune", "train", "examples/local-alpaca.yaml", "--deepspeed",
                         "zero4"], capture_output=True, text=True, cwd=REPO)
    assert ds.returncode == 2 and "--deepspeed zero4: not a preset" in ds.stderr and "Traceback" not in ds.stderr


def test_cfg_options_errors_name_the_field(cli):
    out = cli("train", "internlm2_chat_1_8b_qlora_alpaca_e3", "--cfg-options", "training.optimizer.lr=-1",
              "dataset.promptTemplate=nope")
    assert out.returncode == 2
    assert "spec.training.optimizer.lr" in out.stderr and "spec.dataset.promptTemplate" in out.stderr
    assert cli("train", "internlm2_chat_1_8b_qlora_alpaca_e3", "--cfg-options", "noequals").returncode == 2
    assert cli("train", "internlm2_chat_1_8b_qlora_alpaca_e3", "--deepspeed", "zero7").returncode == 2


@pytest.mark.parametrize("argv,named", [
    (["chat", "model", "--llava", "x"], "--llava x"),
    (["chat", "model", "--image", "x.png"], "--image"),
    (["mmbench", "model", "--data-path", "x.tsv"], "--data-path x.tsv"),
    (["eval_refcoco", "model"], "--data-path"),
    (["preprocess", "refcoco", "--ann-path", "nowhere"], "--ann-path nowhere"),
])
def test_vision_modes_name_the_bad_flag(argv, named, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_dataset_modes_check_the_config_first(capsys):
    assert main(["check-custom-dataset", "nope.yaml"]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_usage_errors_exit_2(cli):
    assert cli("no-such-mode").returncode == 2
    assert cli("copy-cfg").returncode == 2
    assert cli("convert").returncode == 2


def test_list_dataset_format(capsys):
    assert main(["list-dataset-format"]) == 0
    formats = capsys.readouterr().out.split()
    for name in ("xtuner", "openai", "alpaca", "alpaca_zh", "oasst1", "wizardlm", "msagent_react", "pretrain",
                 "crime_kg_assistant", "law_reference", "sql", "tiny_codes", "openorca", "stack_exchange"):
        assert name in formats


def test_validate_and_explain(capsys):
    files = [str(p) for p in sorted((REPO / "examples").glob("*.yaml"))]
    assert main(["validate", *files]) == 0
    capsys.readouterr()
    assert main(["explain", "ftj.spec.training.optimizer"]) == 0
    out = capsys.readouterr().out
    assert "KIND:       FineTuneJob" in out and "lr\t<number>" in out and "Peak learning rate" in out
    assert main(["explain", "chat.spec.autoscaling"]) == 0
    assert "minReplicas must not exceed maxReplicas" in capsys.readouterr().out
    assert main(["explain", "ftj.spec.nope"]) == 2
    assert main(["explain", "pod"]) == 2


def test_crds_check_detects_drift(tmp_path, capsys):
    assert main(["crds", "-o", str(tmp_path)]) == 0
    assert main(["crds", "-o", str(tmp_path), "--check"]) == 0
    (tmp_path / "kubetune.io_finetunejobs.yaml").write_text("stale\n")
    assert main(["crds", "-o", str(tmp_path), "--check"]) == 1


def test_deepspeed_presets_are_xtuners():
    from kubetune.configs import PRESETS, deepspeed_preset

    for name in PRESETS:
        cfg = deepspeed_preset(name)
        assert cfg["gradient_accumulation_steps"] == "auto" and cfg["train_micro_batch_size_per_gpu"] == "auto"
        assert cfg["gradient_clipping"] == "auto" and cfg["zero_allow_untested_optimizer"] is True
        assert cfg["fp16"] == {"enabled": "auto", "initial_scale_power": 16} and cfg["bf16"] == {"enabled": "auto"}
    assert deepspeed_preset("deepspeed_zero1")["zero_optimization"] == {"stage": 1, "overlap_comm": True}
    assert deepspeed_preset("zero2_offload")["zero_optimization"]["offload_optimizer"] == {"device": "cpu",
                                                                                          "pin_memory": True}
    z3o = deepspeed_preset("zero3_offload")["zero_optimization"]
    assert z3o["stage"] == 3 and z3o["offload_param"]["device"] == "cpu"
    assert z3o["stage3_gather_16bit_weights_on_model_save"] is True


@pytest.mark.parametrize("argv", [["--help"], ["list-cfg"], ["train", "-h"]])
def test_fast_paths_do_not_import_heavy_libraries(argv):
    code = ("import sys; from kubetune.cli.main import main\n"
            "try:\n    main(%r)\nexcept SystemExit:\n    pass\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'deepspeed', 'bitsandbytes', 'kopf', "
            "'datasets', 'kubernetes') if m in sys.modules)\n"
            "print('HEAVY', heavy)" % (argv,))
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in out.stdout
    assert " torch" not in out.stderr  # -X importtime lists every module imported


@pytest.mark.parametrize("mode", ["chat", "serve"])
def test_chat_help_lists_every_template_and_refuses_a_bad_one_before_loading(mode, cli, tmp_path):
    from kubetune.data.templates import PROMPT_TEMPLATES, SYSTEM_TEMPLATES

    out = cli(mode, "--help")
    assert out.returncode == 0
    for name in [*PROMPT_TEMPLATES, *SYSTEM_TEMPLATES]:
        assert name in out.stdout, name
    missing = str(tmp_path / "no-such-model")  # would fail to load: the template is refused first
    for flag in ("--prompt-template", "--system-template"):
        bad = cli(mode, missing, flag, "nope")
        assert bad.returncode == 2 and f"argument {flag}: invalid choice: 'nope'" in bad.stderr
        assert bad.stderr.endswith("\n") and "no-such-model" not in bad.stderr and "Traceback" not in bad.stderr


def test_third_party_notices_are_silenced_unless_verbose():
    code = ("import logging, warnings; from kubetune.cli.quiet import silence_third_party; silence_third_party(); "
            "logging.getLogger('bitsandbytes.backends.cpu.ops').warning('bnb-notice'); "
            "logging.getLogger('DeepSpeed').warning('ds-notice'); logging.getLogger('kubetune').warning('ours'); "
            "warnings.warn_explicit('hf-notice', FutureWarning, 'x.py', 1, module='transformers.modeling_utils')")
    for env, shown in (({}, {"ours"}), ({"KUBETUNE_VERBOSE": "1"}, {"ours", "bnb-notice", "ds-notice", "hf-notice"})):
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env={**__import__("os").environ, **env})
        assert proc.returncode == 0, proc.stderr
        assert {w for w in ("ours", "bnb-notice", "ds-notice", "hf-notice") if w in proc.stderr} == shown, env


def test_validate_warns_where_a_gpu_cluster_would_treat_a_valid_spec_badly(tmp_path, capsys):
    spec = {"model": {"uri": "hf://a/b"}, "dataset": {"uri": "s3://x/y.json"}, "training": {"deepspeed": "zero2"},
            "resources": {"nodes": 2}}
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                   "metadata": {"name": "w"}, "spec": spec}))
    assert main(["validate", str(job)]) == 0  # valid; the warnings go to stderr
    err = capsys.readouterr().err
    assert "would be BestEffort" in err and "spec.resources.workVolume: a multi-node DeepSpeed job" in err
    spec["resources"] = {"nodes": 2, "gpusPerNode": 8, "workVolume": {"claimName": "shared"}}
    job.write_text(yaml.safe_dump({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                   "metadata": {"name": "w"}, "spec": spec}))
    assert main(["validate", str(job)]) == 0
    assert "warning" not in capsys.readouterr().err
