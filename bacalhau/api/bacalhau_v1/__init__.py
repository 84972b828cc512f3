"""Go Bacalhau v1.0.3's requester HTTP API (what bacalhau-sdk 1.0.x and bacalhau-apiclient <= 1.0.3 call),
served beside our own API as a translation at the edge: envelope.py checks the RSA-signed envelope,
mappers.py turns Bacalhau's JSON into our one job model and back, routes.py serves the endpoints."""
