"""jface: 3DMM-STN and DECA as pure JAX functions.

Subpackages (the pipeline, in order): ``models`` (formats, loaders, default models) ->
``geometry`` -> ``stn`` / ``flame`` -> ``render`` / ``lighting`` / ``sampling`` -> losses ->
``data`` -> ``train`` (top-level package).
"""

__version__ = "0.1.0"
