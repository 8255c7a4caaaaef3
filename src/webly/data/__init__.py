"""Data layer: the record type, dataset readers, the Parquet manifest, tar shards, decoding.

Import what you need from its module (`webly.data.manifest`, `webly.data.shards`, ...): this
package deliberately imports nothing, so text-only stages never pay for importing torch.
"""
