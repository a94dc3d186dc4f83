"""Models, one file each. Importing this package registers them in `sdmcl.registry.MODELS`."""

from sdmcl.models import mlp, sdmlp  # noqa: F401
from sdmcl.models import fly  # noqa: F401,E402
from sdmcl.models import dendrites  # noqa: F401,E402
from sdmcl.models import nispa  # noqa: F401,E402
from sdmcl.models import convmixer, convsdm  # noqa: F401,E402
