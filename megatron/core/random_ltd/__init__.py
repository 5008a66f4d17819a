"""Random layerwise token dropping (random-LTD), a model-side op of the transformer layer.

`config` is the DeepSpeed `data_routing.random_ltd` block, `schedule` the kept-token count per
step and the token accounting, `routing` which tokens a layer keeps and how it runs on them, and
`token_ops` the token gather / scatter / mask-gather / sort ops with their C++ and CUDA kernels and
pure-torch references. Submodules are imported explicitly; this package imports nothing on its
own.
"""
