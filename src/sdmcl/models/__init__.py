"""Models, one file each. Importing this package registers them in `sdmcl.registry.MODELS`."""

from sdmcl.models import mlp, sdmlp  # noqa: F401
