"""edgewise: train, optimize, package and deploy AI models at the edge."""

from edgewise.errors import EdgewiseError

__version__ = "0.1.0"
__all__ = ["EdgewiseError", "__version__"]
