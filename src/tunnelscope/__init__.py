"""tunnelscope: layer-wise out-of-distribution transfer of pretrained image networks.

Importing the package is cheap; heavy modules (torch, pandas) load only when their
submodule is imported.
"""

__version__ = "0.1.0"
