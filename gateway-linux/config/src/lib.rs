//! Istio YAML and settings parsing (in progress).
