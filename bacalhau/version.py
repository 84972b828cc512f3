"""The version of this bacalhau; clients and nodes report it."""

VERSION = "0.1.0"
