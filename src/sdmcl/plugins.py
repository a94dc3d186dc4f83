"""Plugins: code outside sdmcl that registers models, regularizers, data sources or loggers.

A plugin is a Python module whose import registers things (`sdmcl.registry`). sdmcl imports:
- every entry point of the group `sdmcl.plugins` of the installed distributions, once, the
  first time the registries are used (`registry.load_all`). A package declares one in its
  pyproject.toml:

      [project.entry-points."sdmcl.plugins"]
      my_models = "my_package.sdmcl_plugin"

- every module named by the command line's global `--import MODULE` option
  (`sdmcl --import my_models run exp.yaml`), e.g. a file `my_models.py` in the current
  directory, which is searched first.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata

from sdmcl.errors import UserError

ENTRY_POINT_GROUP = "sdmcl.plugins"

_entry_points_loaded = False
imported: list[str] = []  # modules named by --import, in order (launchers re-import them in workers)


class PluginError(UserError):
    pass


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def load_entry_points() -> list[str]:
    """Import the `sdmcl.plugins` entry points of the installed distributions (once per process)."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return []
    _entry_points_loaded = True
    names = []
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", None) or "an installed package"
        try:
            ep.load()
        except Exception as err:  # any failure of foreign code ends the same way for the user
            raise PluginError(
                f"plugin {ep.name!r} ({ep.value}, from {dist}) failed to import ({_first_line(err)}); "
                f"fix or uninstall {dist}"
            ) from None
        names.append(ep.name)
    return names


def import_modules(modules: list[str]) -> None:
    """Import the modules given with `--import` (the current directory first on the path)."""
    if not modules:
        return
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    for name in modules:
        if name.endswith(".py"):
            raise PluginError(f"--import {name}: give a module name, not a file (e.g. --import {name[:-3].replace('/', '.')})")
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name and (name == err.name or name.startswith(err.name + ".")):
                raise PluginError(f"--import {name}: no module named {err.name!r} on the Python path "
                                  "(the current directory is searched first); check the name or install it") from None
            raise PluginError(f"--import {name}: importing it failed ({_first_line(err)})") from None
        except Exception as err:
            raise PluginError(f"--import {name}: importing it failed ({_first_line(err)})") from None
        if name not in imported:
            imported.append(name)
