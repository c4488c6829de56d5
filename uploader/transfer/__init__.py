"""Moving one file's bytes into S3: a single PUT or a multipart upload."""
