"""p2prt — pool idle computers into one encrypted peer-to-peer compute cluster.

The task API (``init``, ``remote``, ``get``, ...) arrives with the runtime; today the
package provides its foundation: identities (:mod:`p2prt.identity`), the sans-IO wire
protocol (:mod:`p2prt.wire`) and Noise-encrypted trio transport (:mod:`p2prt.transport`).
"""

from . import errors
from .errors import P2prtError

__version__ = "0.1.0"

__all__ = ["__version__", "errors", "P2prtError"]
