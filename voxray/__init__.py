"""voxray: speech batch processing and serving on Ray.

Importing the package has no side effects: heavy modules (torch, transformers, ray,
onnxruntime) are imported only where they are used.
"""

import logging

__version__ = "0.1.0"

# Library silent by default; applications configure logging themselves.
logging.getLogger("voxray").addHandler(logging.NullHandler())
