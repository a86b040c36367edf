from .__about__ import __version__
from .check import HuntressCheck

__all__ = ['__version__', 'HuntressCheck']
