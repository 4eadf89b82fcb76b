"""The training stages refuse hostile data before any training, and leave nothing in the registry.

A representative subset of tests/hostile/corpus.py per kind goes to the stage that reads it (pairs -> pretrain,
sft -> sft, qa -> rl), with the tiny model and one planned step, so a case that is wrongly accepted fails by
producing a checkpoint rather than by hanging."""
import os
import re
from pathlib import Path

import pytest

from corpora.validate import DataError
from stages.model import ModelConfig
from stages.registry import Registry
from tests.hostile.corpus import CASES, digest

BY_NAME = {c.name: c for c in CASES}
PER_STAGE = {
    "pretrain": ["path-traversal", "decompression-bomb-png", "symlink-out-of-root", "malformed-json-line",
                 "one-megabyte-caption", "csv-unbalanced-quote", "not-a-tar-shard", "empty-caption"],
    "sft": ["assistant-turn-missing", "zero-byte-image", "non-utf8-bytes-sft", "absolute-path-etc-passwd",
            "decompression-bomb-in-sft", "empty-messages", "whitespace-only-jsonl"],
    "rl": ["answer-letter-E-of-4", "yesno-answer-maybe", "symlink-out-of-root-qa", "truncated-jpeg", "empty-jsonl",
           "options-as-string", "missing-answer"],
}
KIND = {"pretrain": "pairs", "sft": "sft", "rl": "qa"}
ALLOWED_IN_HOME = {"logs", "cache"}  # TensorBoard folders and unpacked shards are not registry entries


def _run_stage(stage: str, path: Path, batch_size: int = 1):
    tiny = ModelConfig(name_or_path="tiny:qwen2_vl")
    if stage == "pretrain":
        from stages.pretrain import PretrainConfig, run

        return run(PretrainConfig(model=tiny, data=str(path), max_steps=1, batch_size=batch_size))
    if stage == "sft":
        from stages.sft import SFTConfig, run

        return run(SFTConfig(model=tiny, data=str(path), max_steps=1, batch_size=batch_size))
    # the implementation module directly (stages.rl.run is the same function)
    from stages.rl.config import RLConfig
    from stages.rl.training import run

    return run(RLConfig(model=tiny, init="tiny:qwen2_vl", data=str(path), max_steps=1))


def _registry_leftovers(home: Path) -> list[str]:
    """Anything a stage may have written besides logs and caches: entries, LATEST pointers, staging folders."""
    if not home.exists():
        return []
    found = [str(p.relative_to(home)) for p in home.iterdir() if p.name not in ALLOWED_IN_HOME]
    found += [str(p.relative_to(home)) for p in home.rglob("*")
              if p.name == "LATEST" or p.name.startswith(("step-", ".staging")) or p.name == "manifest.json"]
    return found


CASES_PER_STAGE = [(stage, BY_NAME[name]) for stage, names in PER_STAGE.items() for name in names]


def test_subset_covers_each_kind_with_its_stage():
    assert all(BY_NAME[n].kind == KIND[s] for s, names in PER_STAGE.items() for n in names)


@pytest.mark.parametrize(("stage", "case"), CASES_PER_STAGE, ids=[f"{s}-{c.name}" for s, c in CASES_PER_STAGE])
def test_stage_refuses_before_training_and_writes_nothing(stage, case, tmp_path):
    data = tmp_path / "data"
    path = case.write(data / case.name)
    before = digest(data)
    with pytest.raises(DataError, match=re.escape(f"{path}:{case.line}: {case.code}: ")):
        _run_stage(stage, path)
    home = Path(os.environ["PATHOR1_HOME"])
    assert _registry_leftovers(home) == []
    assert Registry().entries() == [] and Registry().latest(stage) is None
    assert digest(data) == before  # nothing lost or rewritten


@pytest.mark.slow
def test_pretrain_trains_on_every_handled_image_mode(tmp_path):
    """CMYK, LA, palette, 16-bit, 1-bit, RGBA, grey, int32 and float images are converted, not refused: one step
    of pretraining on a batch of all of them yields a checkpoint."""
    import json

    from tests.hostile.corpus import HANDLED_MODES, save_image

    root = tmp_path / "modes"
    root.mkdir()
    lines = []
    for i, (name, mode) in enumerate(HANDLED_MODES.items()):
        save_image(root / name, mode, size=(32, 32))
        lines.append(json.dumps({"id": f"m{i}", "image": name, "caption": f"tissue in mode {mode}"}))
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    path = _run_stage("pretrain", root / "pairs.jsonl", batch_size=len(HANDLED_MODES))  # every image in the step
    assert (path / "manifest.json").is_file() and Registry().latest("pretrain") == path


def test_lenient_stage_trains_on_the_good_records_only(tmp_path):
    # lenient: validation reports the corrupt record, the reader leaves it out, training uses the rest
    from stages.pretrain import PretrainConfig, run

    path = BY_NAME["corrupt-bytes-named-png"].write(tmp_path / "data")
    checkpoint = run(PretrainConfig(model=ModelConfig(name_or_path="tiny:qwen2_vl"), data=str(path), max_steps=2,
                                    batch_size=3, eval_fraction=0.0, validate="lenient"))
    assert (checkpoint / "manifest.json").is_file()
