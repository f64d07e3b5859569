"""Video data: manifests, sampling, decoding, clip transforms, the clip dataset and the synthetic set.

Import the submodules directly (`from actionlab.data import dataset`); this package imports nothing.
"""
