"""Generated from proto/linkage/v1 by `make protos`; do not edit."""
