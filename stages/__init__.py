"""pathor1 training stages.

``stages.compat``, ``stages.config`` and ``stages.registry`` are the project's foundation: pathoclip and
evaluation may import those three (and only those) from here. ``model``, ``pretrain``, ``sft`` and ``rl``
train models.
"""
from stages import compat as _compat

_compat.install()
