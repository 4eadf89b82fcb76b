"""Each patch of a library internal is checked against the releases it was written for: inside the range it
patches, outside it refuses (pathoclip) or leaves the library alone (vision sharing). These tests pin the library
behaviour the patches rely on, so an upgrade that changes it fails here first."""
import inspect

import pytest

from stages.compat import require_version, version_in_range


@pytest.mark.parametrize("version, expected", [("5.17.0", True), ("5.23.1", True), ("5.24.0", False),
                                               ("5.16.9", False), ("6.0", False)])
def test_version_range_is_inclusive_by_major_minor(version, expected):
    assert version_in_range("transformers", ("5.17", "5.23"), version) is expected


def test_a_missing_package_is_out_of_range():
    assert not version_in_range("no-such-package-pathor1", ("1.0", "9.0"))


def test_require_version_names_the_package_the_range_and_the_patch():
    with pytest.raises(RuntimeError, match=r"^thing patches torch internals checked against torch 0\.1-0\.2, not "):
        require_version("torch", ("0.1", "0.2"), "thing")
    require_version("torch", ("2.0", "9.9"), "thing")  # in range: no error


def test_open_clip_train_is_the_release_and_signature_pathoclip_wraps():
    import open_clip_train.main as open_clip_main

    from pathoclip.launch import OPEN_CLIP_CHECKED, TRAIN_ONE_EPOCH_ARGS, check_train_one_epoch

    assert version_in_range("open_clip_torch", OPEN_CLIP_CHECKED)
    check_train_one_epoch(open_clip_main.train_one_epoch)  # the positional order _seeded_epochs forwards
    import open_clip_train.distributed as open_clip_distributed  # main() -> init_distributed_device -> here:

    # each phase's process creates its group there, from the environment (pathoclip.launch.phase_env's MASTER_PORT)
    source = inspect.getsource(open_clip_distributed)
    assert "torch.distributed.init_process_group(" in source and "dist_url or 'env://'" in source

    def renamed(model, data, loss, epoch, optimizer, scaler, scheduler, args, tb_writer=None):  # upstream's newer shape
        pass

    with pytest.raises(RuntimeError, match="_seeded_epochs must be updated"):
        check_train_one_epoch(renamed)
    assert TRAIN_ONE_EPOCH_ARGS[-2:] == ("dist_model", "args")


def test_vision_sharing_leaves_an_unchecked_tower_alone(tmp_path, monkeypatch):
    import stages.rl.vision_share as vs
    from stages.model import ModelConfig, build_tiny, load_model

    model, _ = load_model(ModelConfig(name_or_path=str(build_tiny("qwen2_5_vl", tmp_path))))
    visual = vs.vision_tower(model)
    assert vs.tower_supported(visual)  # the installed transformers' Qwen-VL tower is what the override expects
    monkeypatch.setattr(vs, "TRANSFORMERS_CHECKED", ("9.0", "9.1"))
    assert not vs.share_vision_encoding(model)
    assert "forward" not in vars(visual)  # no instance override installed: the library's own forward runs


def test_transformers_checkpointed_layers_keep_the_cache_only_when_told():
    """stages.rl.prefix_cache relies on transformers' GradientCheckpointingLayer dropping `past_key_values` inside a
    checkpointed layer unless `_can_checkpoint_with_cache` is True (what keep_cache_when_checkpointing sets, then
    removes), and on gradient_checkpointing_enable storing its kwargs in a functools.partial."""
    from functools import partial

    import torch
    from torch.utils.checkpoint import checkpoint
    from transformers.modeling_layers import GradientCheckpointingLayer

    from stages.rl import prefix_cache

    assert prefix_cache.hooks_supported()
    seen = []

    class Layer(GradientCheckpointingLayer):
        def forward(self, x, past_key_values=None):
            seen.append(past_key_values)
            return x * 2

    layer = Layer().train()
    layer.gradient_checkpointing = True
    layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=False)
    model = torch.nn.Sequential(layer)
    x = torch.ones(2, requires_grad=True)
    layer(x, past_key_values="cache")
    with prefix_cache.keep_cache_when_checkpointing(model):
        layer(x, past_key_values="cache")
    layer(x, past_key_values="cache")
    assert seen == [None, "cache", None]
    assert not prefix_cache.reentrant_checkpointing(model)
    layer._gradient_checkpointing_func = partial(checkpoint, use_reentrant=True)
    assert prefix_cache.reentrant_checkpointing(model)
