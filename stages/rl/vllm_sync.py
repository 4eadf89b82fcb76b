"""vLLM colocate with sleep mode: the policy's weights reach vLLM once per optimizer step, not once per DAPO round.

TRL 1.16 (`trl/generation/vllm_generation.py`, `VLLMGeneration.generate`) puts vLLM to sleep at level 2 after
every generate call -- which discards its weights -- and marks them discarded (`_llm_weights_sleeping`), so the
next call re-sends the whole model (`sync_weights`). The trainer's own per-step check (`_last_loaded_step`)
never sees this. Dynamic sampling calls generate up to `max_num_gen_batches` times per step on unchanged
weights: every round after the first re-sent them (a 7B model: ~16 GB per round).

Within one step's rounds the sleep TRL asks for is deferred: vLLM stays awake between rounds (TRL's
`wake_up(tags=["kv_cache"])` on an awake engine is a no-op in vLLM: "Executor is not sleeping"), the weights
are not marked discarded, and the sleep runs once, after the last round. Between rounds vLLM's share of the GPU
stays mapped while TRL scores a round (rewards, no-grad old-policy / reference forwards), as it is during
generation itself; the optimizer step still runs with vLLM asleep.
Server mode and colocate without sleep mode already sync once per step: nothing changes there.
"""
from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def one_sync_per_step(trainer):
    """Around one step's generation rounds. Yields `before_round()`, to call before every round after the first."""
    engine = getattr(trainer, "vllm_generation", None) if getattr(trainer, "use_vllm", False) else None
    if engine is None or getattr(engine, "mode", None) != "colocate" or not getattr(engine, "enable_sleep_mode", False):
        yield lambda: None
        return
    from stages import adapters

    if not all([adapters.check("vllm.LLM.sleep"),  # both checked: each logs its own fallback once
                adapters.check("trl.generation.vllm_generation.VLLMGeneration._llm_weights_sleeping")]):
        yield lambda: None  # TRL's own sleep after every round
        return
    llm = engine.llm
    had_own = "sleep" in vars(llm)
    sleep = llm.sleep
    asked: list[tuple[tuple, dict]] = []

    def defer(*args, **kwargs):
        asked.append((args, kwargs))

    def before_round():
        if asked:  # TRL marked the weights discarded after the previous round; they were kept
            engine._llm_weights_sleeping = False

    llm.sleep = defer  # an instance attribute over vLLM's method, for this step's rounds only
    try:
        yield before_round
    finally:
        if had_own:
            llm.sleep = sleep
        else:
            del llm.sleep
        if asked:
            args, kwargs = asked[-1]
            sleep(*args, **kwargs)
            engine._llm_weights_sleeping = True
