"""The lean S3 data path: PutObject and UploadPart over aiohttp, signed by botocore.

`endpoint` resolves where an object's bytes go (botocore's own endpoint rules),
`signing` signs a request with botocore's SigV4 and the session's credentials,
`wire` turns request parameters into headers and error responses into typed
errors, `datapath` sends (and holds the `transfer.data_path: botocore` fallback),
`metadata` says which user metadata S3 stores as given.
"""
