from stages import compat as _compat

_compat.install()
