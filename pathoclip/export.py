"""open_clip_train checkpoint -> open_clip's hf-hub folder layout, and loading such a folder back.

The folder holds ``open_clip_config.json`` (model + preprocess config, as ``open_clip.push_to_hf_hub`` writes
it) and ``open_clip_model.safetensors``; ``open_clip.create_model_and_transforms("local-dir:<folder>")``
loads it with no pathor1 code. We write the files with open_clip's own ``save_config_for_hf`` and
safetensors rather than ``save_for_hf``, because that one also calls ``tokenizer.save_pretrained``, which
the default CLIP BPE tokenizer does not have (its vocab ships inside open_clip).

    python -m pathoclip.export runs/logs/pathoclip/demo/b/checkpoints/epoch_3.pt --model PathoCLIP-Tiny --out DIR
"""
from __future__ import annotations

import argparse
from pathlib import Path

CONFIG_DIR = Path(__file__).parent / "configs"
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"


def register_model_configs() -> list[str]:
    """Make the shipped architectures (``pathoclip/configs/*.json``) known to open_clip by name."""
    import open_clip

    from stages import adapters

    known = open_clip.factory._MODEL_CONFIG_PATHS if adapters.check("open_clip.factory._MODEL_CONFIG_PATHS") else []
    if str(CONFIG_DIR) not in map(str, known):
        open_clip.add_model_config(CONFIG_DIR)
    return sorted(p.stem for p in CONFIG_DIR.glob("*.json"))


def read_training_checkpoint(path) -> dict:
    """The model state dict of an open_clip_train ``epoch_N.pt``, loaded with ``weights_only=True``.

    open_clip_train pickles {epoch, name, state_dict, optimizer[, scaler]}: only tensors, numbers, strings
    and containers, so the restricted unpickler accepts it and no arbitrary code can run on load.
    """
    import torch

    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a loadable open_clip_train checkpoint ({type(e).__name__}: {e})") from None
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not state:
        raise ValueError(f"{path}: no model state_dict inside (keys: {list(checkpoint)[:8]})")
    # DDP saves parameters as 'module.<name>'
    return {k.removeprefix("module."): v for k, v in state.items()}


def export_checkpoint(checkpoint, model_name: str, out_dir) -> Path:
    """Write the hf-hub layout for ``checkpoint`` (a path to ``epoch_N.pt``) of architecture ``model_name``."""
    import open_clip
    from open_clip.push_to_hf_hub import save_config_for_hf
    from safetensors.torch import save_file

    register_model_configs()
    model_config = open_clip.get_model_config(model_name)
    if model_config is None:
        raise ValueError(f"unknown open_clip model {model_name!r}; shipped: {register_model_configs()}")
    model = open_clip.create_model(model_name, pretrained=None, device="cpu")
    model.load_state_dict(read_training_checkpoint(checkpoint))  # strict: the architecture must match
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / WEIGHTS_FILE))
    save_config_for_hf(model, out_dir / CONFIG_FILE, model_config)
    return out_dir


def load_exported(folder, device: str = "cpu"):
    """(model in eval mode, eval preprocess, tokenizer) of an exported folder, through open_clip alone."""
    import open_clip

    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder}: not an open_clip export (no {CONFIG_FILE})")
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device=device)
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pathoclip.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="open_clip_train checkpoint (epoch_N.pt)")
    parser.add_argument("--model", required=True, help="open_clip architecture name, e.g. PathoCLIP-Tiny")
    parser.add_argument("--out", required=True, help="output folder (hf-hub layout)")
    args = parser.parse_args(argv)
    try:
        print(export_checkpoint(args.checkpoint, args.model, args.out))
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
