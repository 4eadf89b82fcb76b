"""What sampling from the policy needs, shared by RL (stages.rl) and on-policy distillation (stages.opd): QA rows
as TRL prompt rows, left-padded prompts and the prompt order (`CurriculumPlan` / `CurriculumSampler`: phases of the
dataset in TRL's RepeatSampler layout, one pass over every planned step, so resuming lands on the same prompts --
TRL's own sampler reshuffles per epoch from a generator that a resumed run does not replay). The vision tokens a
completion must never contain belong to the processor: stages.model.vision_token_ids."""
from __future__ import annotations

import math
from dataclasses import dataclass


def prompt_dataset(qa, template: str):
    """QA rows -> TRL rows: a conversational `prompt` rendered from the template file, images decoded lazily.

    The qa columns (answer, kind, options, solution) stay: TRL hands them to the reward functions.
    """
    from datasets import Image, List

    from corpora.prompts import render_prompt

    def to_prompt(row):
        return {"prompt": [{"role": "user", "content": render_prompt(template, row["question"], row["options"])}]}

    ds = qa.map(to_prompt, desc="rendering prompts")
    return ds.cast_column("images", List(Image()))


def pad_prompts_left(processor) -> None:
    """TRL left-pads the prompt ids but builds the forward's ``mm_token_type_ids`` with the processor's own
    padding side. With a right-padding processor the image-token types of shorter prompts sit at the wrong
    positions: Qwen-VL's rope index then silently misplaces the image (or fails once the padding is longer than
    the text before the image). TRL sets "left" only on processors it loads itself."""
    getattr(processor, "tokenizer", processor).padding_side = "left"


@dataclass
class CurriculumPlan:
    """`pools[p]`: dataset indices of phase p, in consumption order when `ordered`; `phase_steps[p]`: its steps."""

    pools: list[list[int]]
    phase_steps: list[int]
    ordered: bool

    @classmethod
    def build(cls, phase_sizes: list[int], phase_steps: list[int], keys: list | None, seed: int) -> "CurriculumPlan":
        """Phases laid one after another in the dataset; `keys` (one per row, or None = shuffle) orders each phase,
        ties broken by a permutation seeded with `seed` (so equal keys are not read in file order)."""
        pools, start = [], 0
        for p, size in enumerate(phase_sizes):
            if size < 1:
                raise ValueError(f"curriculum phase {p + 1} has no questions")
            pool = list(range(start, start + size))
            if keys is not None:
                import torch

                tie = torch.randperm(size, generator=torch.Generator().manual_seed(seed * 1009 + p)).tolist()
                pool = [i for _, _, i in sorted(zip((keys[i] for i in pool), tie, pool))]
            pools.append(pool)
            start += size
        return cls(pools, list(phase_steps), keys is not None)

    def phase_at(self, step: int) -> int:
        """The phase optimizer step `step` (0-based) trains in; the last phase past the end."""
        for p, end in enumerate(_ends(self.phase_steps)):
            if step < end:
                return p
        return len(self.phase_steps) - 1

    def pool_at(self, step: int) -> list[int]:
        return self.pools[self.phase_at(step)]

    def sampler(self, *, batch_size: int, mini_repeat_count: int, repeat_count: int, steps_per_chunk: float,
                seed: int) -> "CurriculumSampler":
        chunks = math.ceil(sum(self.phase_steps) / steps_per_chunk)
        phases = [self.phase_at(math.floor(k * steps_per_chunk)) for k in range(chunks)]
        return CurriculumSampler(self.pools, phases, self.ordered, batch_size, mini_repeat_count, repeat_count, seed)


def _ends(steps: list[int]) -> list[int]:
    out, total = [], 0
    for n in steps:
        total += n
        out.append(total)
    return out


class CurriculumSampler:  # a torch Sampler by protocol (__iter__ / __len__): keeps this module torch-free to import
    """RepeatSampler's layout with chunk k drawn from phase `chunk_phases[k]`: each phase is read as a stream --
    its ordered pool repeated, or a fresh seeded permutation of it per pass -- continued where its last chunk
    stopped."""

    def __init__(self, pools, chunk_phases, ordered, batch_size, mini_repeat_count, repeat_count, seed):
        self.pools, self.chunk_phases, self.ordered = pools, list(chunk_phases), ordered
        self.batch_size, self.mini_repeat_count, self.repeat_count, self.seed = (
            batch_size, mini_repeat_count, repeat_count, seed)

    def _pass(self, phase: int, n: int) -> list[int]:
        import torch

        pool = self.pools[phase]
        if self.ordered:
            return pool
        generator = torch.Generator().manual_seed((self.seed * 1_000_003 + phase) * 10_007 + n)
        return [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]

    def chunks(self) -> list[list[int]]:
        """The prompts of each generation batch, in order (deterministic)."""
        cursors = {p: ([], 0) for p in set(self.chunk_phases)}  # phase -> (unread stream, passes started)
        out = []
        for phase in self.chunk_phases:
            stream, passes = cursors[phase]
            while len(stream) < self.batch_size:
                stream, passes = stream + self._pass(phase, passes), passes + 1
            out.append(stream[:self.batch_size])
            cursors[phase] = (stream[self.batch_size:], passes)
        return out

    def __iter__(self):
        for chunk in self.chunks():
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        return len(self.chunk_phases) * self.batch_size * self.mini_repeat_count * self.repeat_count
