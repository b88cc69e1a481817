"""Make some installed modules look not installed, in this interpreter and in every process it starts.

Python imports `sitecustomize` at start-up from `sys.path`, so a child process whose `PYTHONPATH` starts with this
folder runs this file first. `$PROMPTMNER_HIDDEN_MODULES` lists top-level module names (comma-separated) and
`$PROMPTMNER_HIDDEN_DISTRIBUTIONS` the distributions that provide them. Every import finder is wrapped so that, for
those names, `import` raises `ModuleNotFoundError`, `importlib.util.find_spec` returns `None` and
`importlib.metadata` finds no distribution: what a machine without them shows.

Used by the tests for a Hub user's machine (this project's own modules hidden) and for a user who installed only
what the README's command installs (the optional extras hidden).
"""

import importlib.abc
import os
import re
import sys


def _names(variable):
    return {name.strip() for name in os.environ.get(variable, "").split(",") if name.strip()}


def _normalized(name):
    return re.sub(r"[-_.]+", "-", name or "").lower()


HIDDEN_MODULES = _names("PROMPTMNER_HIDDEN_MODULES")
HIDDEN_DISTRIBUTIONS = {_normalized(name) for name in _names("PROMPTMNER_HIDDEN_DISTRIBUTIONS")}


class HidingFinder(importlib.abc.MetaPathFinder):
    """An import finder that finds nothing of the hidden modules and distributions, and the rest as `finder` does."""

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in HIDDEN_MODULES:
            return None
        find_spec = getattr(self.finder, "find_spec", None)
        return find_spec(fullname, path, target) if find_spec is not None else None

    def find_distributions(self, *args, **kwargs):
        find = getattr(self.finder, "find_distributions", None)
        found = find(*args, **kwargs) if find is not None else ()
        return (dist for dist in found if _normalized(dist.metadata["Name"]) not in HIDDEN_DISTRIBUTIONS)

    def invalidate_caches(self):
        invalidate = getattr(self.finder, "invalidate_caches", None)
        if invalidate is not None:
            invalidate()

    def __getattr__(self, name):
        return getattr(self.finder, name)


if HIDDEN_MODULES or HIDDEN_DISTRIBUTIONS:
    sys.meta_path[:] = [HidingFinder(finder) for finder in sys.meta_path]
    for _name in list(sys.modules):  # anything imported before this file (nothing of the hidden ones, normally)
        if _name.partition(".")[0] in HIDDEN_MODULES:
            del sys.modules[_name]
