"""`sdmcl data`: list the sources, download one, check one, print the cache directory.

    sdmcl data list  [--data-dir D]
    sdmcl data fetch NAME [--data-dir D]
    sdmcl data check NAME [--path P] [--data-dir D] [--download]
    sdmcl data path  [--data-dir D]
"""

from __future__ import annotations

import argparse

import numpy as np

from sdmcl.data.sources import SOURCES, available_sources, cache_dir, cache_status, fetch, load_dataset
from sdmcl.errors import DataError


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register `data` on the CLI's subparsers; the handler is `args.handler(args)`."""
    parser = subparsers.add_parser("data", help="list, download and check data sources")
    actions = parser.add_subparsers(dest="data_action", metavar="ACTION", required=True)

    def action(name: str, help_text: str, needs_source: bool = False) -> argparse.ArgumentParser:
        sub = actions.add_parser(name, help=help_text, description=help_text)
        if needs_source:
            sub.add_argument("name", metavar="NAME", help="source: " + ", ".join(SOURCES))
        sub.add_argument("--data-dir", default=None, help="download cache (default $SDMCL_DATA_DIR or ~/.cache/sdmcl)")
        return sub

    action("list", "the sources and whether each is in the cache")
    action("fetch", "download a source into the cache and verify its checksums", needs_source=True)
    check = action("check", "load a source; print shapes, class counts and checksum status", needs_source=True)
    check.add_argument("--path", default=None, help="directory (or embedding file) holding the original files")
    check.add_argument("--download", action="store_true", help="download missing files into the cache first")
    action("path", "print the cache directory")
    parser.set_defaults(handler=handle)
    return parser


def handle(args: argparse.Namespace) -> int:
    available_sources()  # registers the sources of installed plugins
    if args.data_action == "path":
        print(cache_dir(args.data_dir))
    elif args.data_action == "list":
        _list(args.data_dir)
    elif args.data_action == "fetch":
        _fetch(args.name, args.data_dir)
    elif args.data_action == "check":
        _check(args.name, args.path, args.data_dir, args.download)
    return 0


def _known(name: str) -> str:
    if name not in SOURCES:
        raise DataError(f"{name!r} is not a known source; choose one of {', '.join(SOURCES)} (see `sdmcl data list`)")
    return name


def _list(data_dir: str | None) -> None:
    width = max(map(len, SOURCES))
    for name, info in SOURCES.items():
        print(f"{name:<{width}}  {info.description}")
        print(f"{'':<{width}}  {cache_status(name, data_dir)}")


def _fetch(name: str, data_dir: str | None) -> None:
    info = SOURCES[_known(name)]
    if not info.files:
        print(f"{name}: nothing to download ({cache_status(name, data_dir)})")
        return
    folder = fetch(name, data_dir)
    checks: list[str] = []
    load_dataset(name, data_dir=data_dir, download=False, checks=checks)
    print(f"{name}: in {folder}")
    for line in checks:
        print("  " + line)


def _check(name: str, path: str | None, data_dir: str | None, download: bool) -> None:
    checks: list[str] = []
    data = load_dataset(_known(name), path=path, data_dir=data_dir, download=download, checks=checks)
    print(f"{data.name}: {data.num_classes} classes, input shape {data.input_shape}")
    for split, x, y in (("train", data.train_x, data.train_y), ("test", data.test_x, data.test_y)):
        counts = np.bincount(y, minlength=data.num_classes)
        low, high = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        print(f"  {split}: x {tuple(x.shape)} {x.dtype} in [{low:g}, {high:g}], y {tuple(y.shape)}")
        print(f"  {split} samples per class: " + " ".join(f"{c}:{n}" for c, n in enumerate(counts)))
    for line in checks:
        print("  " + line)
