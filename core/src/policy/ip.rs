//! CIDR blocks for `ipBlocks`, `notIpBlocks` and `source.ip` conditions.

use core::fmt;
use core::net::IpAddr;
use core::str::FromStr;

/// An address block, `a.b.c.d/len` or `x::y/len`; a bare address is a
/// single-host block. Host bits below the prefix are ignored, as Go's
/// `netip.ParsePrefix` (Istio's validator) allows them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IpBlock {
    addr: IpAddr,
    prefix: u8,
}

/// Why an IP block did not parse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpBlockError;

impl fmt::Display for IpBlockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("not an IP address or CIDR block")
    }
}

impl core::error::Error for IpBlockError {}

impl IpBlock {
    /// Parses `addr` or `addr/prefix`.
    pub fn parse(s: &str) -> Result<Self, IpBlockError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                // Only plain decimal digits: `u8::from_str` would accept "+8".
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(IpBlockError);
                }
                (a, Some(u8::from_str(p).map_err(|_| IpBlockError)?))
            }
            None => (s, None),
        };
        let addr = IpAddr::from_str(addr).map_err(|_| IpBlockError)?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(IpBlockError);
        }
        Ok(IpBlock { addr, prefix })
    }

    /// Whether `ip` is inside the block. IPv4-mapped IPv6 addresses
    /// (`::ffff:a.b.c.d`, as dual-stack sockets report IPv4 peers) count as
    /// the IPv4 address.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => prefix_eq(
                u128::from(net.to_bits()) << 96,
                u128::from(ip.to_bits()) << 96,
                self.prefix,
            ),
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                prefix_eq(net.to_bits(), ip.to_bits(), self.prefix)
            }
            _ => false,
        }
    }
}

/// Compares the top `prefix` bits of two left-aligned 128-bit values.
fn prefix_eq(a: u128, b: u128, prefix: u8) -> bool {
    if prefix == 0 {
        return true;
    }
    let shift = 128 - u32::from(prefix);
    (a >> shift) == (b >> shift)
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        IpAddr::from_str(s).unwrap()
    }

    #[test]
    fn blocks() {
        let b = IpBlock::parse("10.1.0.0/16").unwrap();
        assert!(b.contains(ip("10.1.2.3")));
        assert!(!b.contains(ip("10.2.0.1")));
        assert!(b.contains(ip("::ffff:10.1.9.9")));
        assert!(!b.contains(ip("fe80::1")));
        let host = IpBlock::parse("192.168.1.7").unwrap();
        assert!(host.contains(ip("192.168.1.7")));
        assert!(!host.contains(ip("192.168.1.8")));
        assert!(IpBlock::parse("0.0.0.0/0").unwrap().contains(ip("8.8.8.8")));
        let v6 = IpBlock::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(ip("2001:db8:1::1")));
        assert!(!v6.contains(ip("2001:db9::1")));
        assert!(IpBlock::parse("::/0").unwrap().contains(ip("::1")));
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "1.2.3",
            "::/129",
            "x/8",
            "10.0.0.0/8/8",
        ] {
            assert_eq!(IpBlock::parse(bad), Err(IpBlockError), "{bad}");
        }
    }
}
