"""Input and output: prompt sources, the output dataset's Arrow schema, sharded Parquet writing with
commit markers and resume, filesystems (local, S3 through s3fs, memory), and `flowscale inspect`."""
