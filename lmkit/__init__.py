"""lmkit: the companion library of the book."""

import logging as _logging

__version__ = "0.1.0"

# Importing transformers imports torchao when it is installed; torchao then logs one warning per
# GPU-only kernel library it cannot load on a CPU machine, and torch logs deprecation notes for
# torchao's enums. They say nothing about the reader's code, so keep them out of every notebook.
_logging.getLogger("torchao").setLevel(_logging.ERROR)
_logging.getLogger("torch.utils._pytree").setLevel(_logging.ERROR)
