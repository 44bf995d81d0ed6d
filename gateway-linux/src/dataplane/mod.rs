//! The data plane: inbound listeners, TLS termination, admission, authorization and proxying (owned by the data-plane engineer).
