"""On-policy distillation (`stages.opd`, `recipes.opd`) on TRL's DistillationTrainer with tiny Qwen2.5-VL models:
a student and a teacher of the same family built from different seeds. The distillation loss goes down, exactly the
trainable towers move, the registry entry has the exact file set and names the teacher, a stopped run resumes to
the uninterrupted run's weights, and a missing teacher is one line, exit 2, before any model loads."""
import pytest
import torch
from safetensors.torch import load_file

from recipes import opd as opd_recipe
from stages.registry import Registry
from stages.rl.trainer import TRAINER_STATE_DIR


def test_a_missing_teacher_is_one_line_exit_2_before_any_model_loads(monkeypatch, capsys):
    import stages.opd.training as training

    monkeypatch.setattr(training, "run", lambda cfg: pytest.fail("the stage ran"))
    assert opd_recipe.main(["init=sft:latest"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("python -m recipes.opd: error: teacher: expected a registry ref, folder or hub id of the "
                   "student's family, found nothing; fix: teacher=REF")


def test_an_unknown_reference_or_bad_data_is_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "qa.jsonl"
    bad.write_text('{"question": "x?", "answer": "Z", "options": ["a", "b"], "images": []}\n')
    assert opd_recipe.main(["teacher=sft:big", "init=sft:none"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("python -m recipes.opd: error: init=sft:none: no checkpoint for 'sft:none'")
    student = tmp_path / "student"
    student.mkdir()  # a model folder (config.json) is taken as it is: the data is checked next, before any model loads
    (student / "config.json").write_text("{}")
    assert opd_recipe.main([f"teacher={student}", f"init={student}", f"data={bad}"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:1:" in err, err


def test_patho_r1_places_opd_between_sft_and_rl_only_with_a_teacher():
    from recipes.patho_r1 import PathoR1Config
    from stages.config import ConfigError, load_config

    cfg = load_config(PathoR1Config, ["stages=[pretrain,sft,opd,rl]", "opd.teacher=sft:big"])
    assert cfg.opd.teacher == "sft:big" and "opd" not in PathoR1Config().stages  # not in the default pipeline
    with pytest.raises(ConfigError, match="opd.teacher"):
        load_config(PathoR1Config, ["stages=[sft,opd,rl]"])


@pytest.mark.slow
def test_student_moves_toward_the_teacher_and_publishes_like_every_stage(tmp_path, capsys):
    from corpora.demo import build_demo
    from stages.model import build_tiny
    from stages.model import tower_of

    demo = build_demo(tmp_path / "demo", n_train=8, n_eval=4, image_size=56)
    student = build_tiny("qwen2_5_vl", tmp_path / "student", seed=0)
    teacher = build_tiny("qwen2_5_vl", tmp_path / "teacher", seed=1)
    common = [f"teacher={teacher}", f"init={student}", f"data={demo.rl}", "max_steps=6", "batch_size=4",
              "max_completion_length=8", "lr=1e-3", "save_every=3"]
    assert opd_recipe.main([*common, "run=full"]) == 0
    entry = Registry().latest("opd", "full")
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(entry) and entry.name == "step-00000006"
    hf = {"config.json", "generation_config.json", "model.safetensors", "processor_config.json", "tokenizer.json",
          "tokenizer_config.json", "chat_template.jinja"}
    assert {p.name for p in entry.iterdir()} == hf | {"manifest.json", "README.md", TRAINER_STATE_DIR}
    assert {p.name for p in (entry / TRAINER_STATE_DIR).iterdir()} == hf | {
        "training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"}
    manifest = Registry().manifest(entry)
    assert manifest["stage"] == "opd" and manifest["parent"] == str(student)
    assert manifest["extra"]["teacher"] == {"ref": str(teacher), "path": str(teacher.resolve())}
    curve = [loss for _, loss in manifest["metrics"]["train_loss_curve"]]
    print("opd loss curve:", [round(x, 4) for x in curve])
    assert len(curve) == 6 and sum(curve[-2:]) / 2 < 0.7 * curve[0], curve  # the divergence to the teacher falls

    before, after = load_file(student / "model.safetensors"), load_file(entry / "model.safetensors")
    for name, p in before.items():  # train=projector_llm: the LLM and projector moved, the vision tower did not
        moved = not torch.equal(p, after[name])
        if tower_of(name) == "vision":
            assert not moved, name
        elif tower_of(name) == "llm" and name.endswith("weight") and "norm" not in name:
            assert moved, name

    assert opd_recipe.main([*common, "run=part", "stop_after=3"]) == 0
    assert Registry().latest("opd", "part").name == "step-00000003"
    assert opd_recipe.main([*common, "run=part"]) == 0  # resume=auto
    resumed = load_file(Registry().latest("opd", "part") / "model.safetensors")
    for key in after:
        torch.testing.assert_close(resumed[key], after[key], rtol=0, atol=1e-6)
