"""One tiny PathoCLIP run on a small demo corpus, shared by the pathoclip tests (training is the slow part)."""
import pytest

TRAIN_ARGS = ["subset_fraction=0.5", "epochs_a=1", "epochs_b=3", "batch_size=16", "lr=0.001", "warmup=2",
              "logging_steps=1", "run=t"]


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory):
    from corpora.demo import build_demo

    return build_demo(tmp_path_factory.mktemp("demo"), seed=0, n_train=192, n_eval=64, image_size=56)


@pytest.fixture(scope="session")
def trained(small_demo, tmp_path_factory):
    """(home folder, final registry entry path, config) of a two-phase run with the tiny config."""
    from stages.config import load_config

    from pathoclip.train import CLIPTrainConfig, train

    home = tmp_path_factory.mktemp("pathor1_home")
    args = [f"data={small_demo.pairs}", f"zeroshot_dir={small_demo.zeroshot}",
            f"zeroshot_prompts={small_demo.zeroshot_prompts}", *TRAIN_ARGS]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PATHOR1_HOME", str(home))
        cfg = load_config(CLIPTrainConfig, args)
        final = train(cfg)
    return home, final, args
