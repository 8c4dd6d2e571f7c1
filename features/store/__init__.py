"""The feature store: chunked HDF5 (``.h5``/``.hdf5``) or zarr v3 (``.zarr``) files.

Layout (both backends), N images in row order given by ``image_ids``:

- ``image_ids``  (N,) int64
- ``features``   (N, L, D) float16/float32; grid: L = grid cells, regions: L = max_boxes (zero-padded)
- ``written``    (N,) bool, set once a row is complete (lets an interrupted run resume)
- regions only: ``num_boxes`` (N,) int32, ``boxes`` (N, L, 4) float32 xyxy in original pixels,
  ``image_hw`` (N, 2) int32, ``class_ids`` (N, L) int32 and ``box_scores`` (N, L) float32 (the detector's
  class per box as BUTD saves it, argmax over the 1,600 objects (0-based), and its probability; -1 and 0 for
  given boxes)

Metadata lives in the attribute ``meta`` (a JSON string): kind, extractor config, weights,
software versions, errors. Features are chunked one image per chunk so a random read touches one chunk. In a
zarr store that is one file per image, which the reader reads straight from disk (``reader.ChunkFiles``: zarr's
own selection costs more per chunk than the read); zarr arrays of any other layout are read through zarr.

A writer fills a temporary sibling (``.NAME.partial``) and renames it onto the final path only
when every row is written, so a store at its final path is always complete.

Modules: ``format`` (layout, backends, value checks: shared), ``writer`` (extraction), ``reader`` (training,
decoding), ``merge`` (shards -> one store). Nothing is re-exported here, so that each stage's code fingerprint
holds only the part of the store it runs.
"""
