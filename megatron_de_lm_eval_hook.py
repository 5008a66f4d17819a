"""Startup hook that makes `lm_eval --model megatron_de` work once megatron-de is installed.

`pip install` puts `megatron_de_lm_eval.pth` next to this module; its one line imports this
module at interpreter start. That imports nothing else: it only puts a finder on sys.meta_path
that waits for `lm_eval.models` (the module lm-evaluation-harness imports to fill its model
registry) and, once that module has run, registers `megatron_de` through
`megatron.evaluation.registration` (a lazy placeholder: the backend itself, torch and the
checkpoint code are imported only when that model is asked for). Then the finder removes itself.
"""

import sys

WATCHED = "lm_eval.models"


class _RegisterAfterExec:
    """Loader wrapper: runs the real loader, then registers `megatron_de`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        try:
            from megatron.evaluation.registration import register_megatron_de

            register_megatron_de()
        except Exception as exc:  # never break lm_eval's other models
            import logging

            logging.getLogger(__name__).warning("megatron_de is not available: %s", exc)

    def __getattr__(self, name):  # resources, get_data, is_package, ...
        return getattr(self._loader, name)


class LmEvalModelsFinder:
    """Meta path finder that wraps the loader of `lm_eval.models`, once."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != WATCHED:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _RegisterAfterExec(spec.loader)
                return spec
        return None


def install():
    """Put the finder first on sys.meta_path (no-op when lm_eval.models is already imported
    or the finder is already there)."""
    if WATCHED in sys.modules:
        return
    if not any(isinstance(f, LmEvalModelsFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, LmEvalModelsFinder())


install()
