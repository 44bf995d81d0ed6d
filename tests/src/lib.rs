//! Helpers for meshgate end-to-end tests (in progress).
