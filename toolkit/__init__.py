"""Edge-deployment model-compression toolkit: distillation core (training side)."""

from edgecommon import ToolkitError

__version__ = "0.1.0"

__all__ = ["ToolkitError", "__version__"]
