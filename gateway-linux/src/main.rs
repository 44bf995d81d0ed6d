//! meshgate: the Linux mutual-TLS ingress gateway binary.

mod dataplane;

fn main() {}
