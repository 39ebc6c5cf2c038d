"""Edge-deployment model-compression toolkit: distillation core (training side)."""

__version__ = "0.1.0"


class ToolkitError(Exception):
    """An error caused by bad input or state; the CLI prints it as one line and exits non-zero."""
