//! Certificate authority and state store (in progress).
