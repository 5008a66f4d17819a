"""Random layerwise token dropping (random-LTD).

`token_ops` holds the token gather / scatter / mask-gather / sort ops with their C++ and CUDA
kernels and pure-torch references. Submodules are imported explicitly; this package imports
nothing on its own.
"""
