"""slides.select=clip: a slide's tiles ranked by a PathoCLIP checkpoint's image-text similarity to the question.
The checkpoint is a random PathoCLIP-Tiny exported by pathoclip.export (open_clip's hf-hub folder, what a
``pathoclip`` registry entry holds); the expected order is computed here with open_clip directly."""
import numpy as np
import torch

from corpora.slides.sampling import SlideSampling, slide_images
from corpora.slides.synthetic import tissue_image, write_svs
from corpora.slides.tiling import TileParams, tile_slide
from pathoclip.export import export_checkpoint, load_exported, register_model_configs


def test_clip_selection_keeps_the_tiles_most_similar_to_the_question(tmp_path):
    import open_clip

    register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("PathoCLIP-Tiny", pretrained=None)
    torch.save({"epoch": 1, "state_dict": model.state_dict()}, tmp_path / "epoch_1.pt")
    folder = export_checkpoint(tmp_path / "epoch_1.pt", "PathoCLIP-Tiny", tmp_path / "clip")

    slide = write_svs(tmp_path / "s.svs", tissue_image(384, 512, [(130, 190, 110, 150), (380, 190, 110, 150)]),
                      mpp=0.5, n_levels=2, tile=128)
    question = "Which region shows dense tumour nuclei?"
    sampling = SlideSampling(k=3, select="clip", clip_model="pathoclip:latest", mpp=0.5, size=64,
                             cache_dir=str(tmp_path / "cache"))
    resolved = sampling.resolved(lambda ref: folder if ref == "pathoclip:latest" else None)
    chosen = slide_images(slide, resolved, text=question)

    tiles = tile_slide(slide, TileParams(mpp=0.5, size=64), cache_root=tmp_path / "cache")
    paths = [str(p) for p in tiles.paths()]
    clip, preprocess, tokenizer = load_exported(folder)
    from PIL import Image

    with torch.no_grad():
        img = torch.nn.functional.normalize(clip.encode_image(
            torch.stack([preprocess(Image.open(p).convert("RGB")) for p in paths])), dim=-1)
        txt = torch.nn.functional.normalize(clip.encode_text(tokenizer([question])), dim=-1)[0]
    scores = (img @ txt).numpy()
    top = sorted(np.argsort(-scores, kind="stable")[:3])
    assert len(paths) > 3 and chosen == [paths[i] for i in top]
