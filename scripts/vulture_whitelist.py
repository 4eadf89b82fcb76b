"""Names vulture (make lint) reports as unused that are used by design: parameters that are cache keys
(provenance._image_hash mtime_ns), signature compatibility (the CPU DDP subclass's device_ids, signal handlers, stand-ins for
vLLM's generate), and pytest fixtures requested only for their side effect. Regenerate with
``vulture ... --min-confidence 80 --make-whitelist`` after checking each new entry is not dead code."""
mtime_ns  # unused variable (evaluation/provenance.py:49)
device_ids  # unused variable (pathoclip/launch.py:115)
stage_dir_glob  # unused variable (tests/evaluation/test_browse.py:31)
flash_attn  # unused variable (tests/reliability/test_gpu_path.py:58)
no_flash_attn  # unused variable (tests/reliability/test_gpu_path.py:63)
flash_attn  # unused variable (tests/reliability/test_gpu_path.py:67)
no_flash_attn  # unused variable (tests/reliability/test_gpu_path.py:71)
sft_entry  # unused variable (tests/stages/test_rl_integration.py:36)
sft_entry  # unused variable (tests/stages/test_rl_integration.py:61)
sampling_params  # unused variable (tests/stages/test_rl_sampling_trainer.py:208)
use_tqdm  # unused variable (tests/stages/test_rl_sampling_trainer.py:208)
profiler  # unused variable (tests/stages/test_rl_trl_passthrough.py:218)
sampling_params  # unused variable (tests/stages/test_rl_trl_passthrough.py:252)
use_tqdm  # unused variable (tests/stages/test_rl_trl_passthrough.py:252)
frame  # unused variable (recipes/launch.py:268): signal handler signature
frame  # unused variable (stages/preemption.py:41): signal handler signature
