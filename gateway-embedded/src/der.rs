//! Just enough DER to build a PKCS#10 request and to read a certificate's
//! URI subject-alternative names, without an allocator.
//!
//! The writer fills a caller buffer front to back. A constructed value is
//! written content-first after [`DerWriter::mark`]; [`DerWriter::close`]
//! then shifts the content right by the size of its header and writes the
//! header in front. That costs a `copy_within` per nesting level (a CSR
//! nests six deep and is a few hundred bytes) and needs no length pre-pass.
//!
//! The reader is a bounds-checked TLV walker: every length is checked
//! against the remaining input, so hostile bytes yield `None`, never a
//! panic or an out-of-bounds read.

/// Tag numbers used by this crate (universal class unless noted).
pub(crate) mod tag {
    pub(crate) const INTEGER: u8 = 0x02;
    pub(crate) const BIT_STRING: u8 = 0x03;
    pub(crate) const OCTET_STRING: u8 = 0x04;
    pub(crate) const OID: u8 = 0x06;
    pub(crate) const UTF8_STRING: u8 = 0x0c;
    pub(crate) const SEQUENCE: u8 = 0x30;
    pub(crate) const SET: u8 = 0x31;
    /// `[0]` constructed, context-specific (CSR attributes).
    pub(crate) const CONTEXT_0: u8 = 0xa0;
    /// `[3]` constructed, context-specific (certificate extensions).
    pub(crate) const CONTEXT_3: u8 = 0xa3;
    /// `[6]` primitive, context-specific: GeneralName uniformResourceIdentifier.
    pub(crate) const GENERAL_NAME_URI: u8 = 0x86;
    /// GeneralName dNSName `[2] IMPLICIT IA5String`.
    pub(crate) const GENERAL_NAME_DNS: u8 = 0x82;
}

/// The output buffer is too small for the value being written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Overflow;

/// Writes DER into a borrowed buffer.
pub(crate) struct DerWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

/// Where a constructed value's content starts (see [`DerWriter::close`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Mark(usize);

impl<'b> DerWriter<'b> {
    pub(crate) fn new(buf: &'b mut [u8]) -> Self {
        DerWriter { buf, len: 0 }
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> &[u8] {
        self.buf.get(..self.len).unwrap_or(&[])
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Appends raw bytes (an already encoded TLV, or content).
    pub(crate) fn raw(&mut self, bytes: &[u8]) -> Result<(), Overflow> {
        let end = self.len.checked_add(bytes.len()).ok_or(Overflow)?;
        self.buf
            .get_mut(self.len..end)
            .ok_or(Overflow)?
            .copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// Appends a primitive TLV.
    pub(crate) fn tlv(&mut self, tag: u8, content: &[u8]) -> Result<(), Overflow> {
        let mut header = [0u8; 6];
        let n = header_into(tag, content.len(), &mut header).ok_or(Overflow)?;
        // Check the whole TLV fits first, so a failure writes nothing.
        let total = n.checked_add(content.len()).ok_or(Overflow)?;
        if self
            .len
            .checked_add(total)
            .is_none_or(|end| end > self.buf.len())
        {
            return Err(Overflow);
        }
        self.raw(header.get(..n).ok_or(Overflow)?)?;
        self.raw(content)
    }

    /// Starts a constructed value; finish it with [`close`](Self::close).
    pub(crate) fn mark(&self) -> Mark {
        Mark(self.len)
    }

    /// Wraps everything written since `mark` in a TLV with `tag`.
    pub(crate) fn close(&mut self, mark: Mark, tag: u8) -> Result<(), Overflow> {
        let start = mark.0;
        let content_len = self.len.checked_sub(start).ok_or(Overflow)?;
        let mut header = [0u8; 6];
        let hl = header_into(tag, content_len, &mut header).ok_or(Overflow)?;
        let new_len = self.len.checked_add(hl).ok_or(Overflow)?;
        if new_len > self.buf.len() {
            return Err(Overflow);
        }
        self.buf.copy_within(start..self.len, start + hl);
        self.buf
            .get_mut(start..start + hl)
            .ok_or(Overflow)?
            .copy_from_slice(header.get(..hl).ok_or(Overflow)?);
        self.len = new_len;
        Ok(())
    }
}

/// Encodes a tag and definite length into `out`; returns the header size.
fn header_into(tag: u8, len: usize, out: &mut [u8; 6]) -> Option<usize> {
    out[0] = tag;
    if len < 0x80 {
        out[1] = u8::try_from(len).ok()?;
        return Some(2);
    }
    let bytes = u32::try_from(len).ok()?.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    let significant = bytes.get(skip..)?;
    out[1] = 0x80 | u8::try_from(significant.len()).ok()?;
    out.get_mut(2..2 + significant.len())?
        .copy_from_slice(significant);
    Some(2 + significant.len())
}

/// One decoded TLV: its tag, its content and everything after it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) content: &'a [u8],
}

/// Reads the TLV at the start of `input`; returns it and the rest.
///
/// Only single-byte tags and definite lengths of up to four bytes are
/// accepted, which covers every certificate field this crate reads.
pub(crate) fn read_tlv(input: &[u8]) -> Option<(Tlv<'_>, &[u8])> {
    let (&tag, rest) = input.split_first()?;
    // High-tag-number form (low five bits all set) is not used by X.509.
    if tag & 0x1f == 0x1f {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let (len_bytes, after) = rest.split_at_checked(n)?;
        rest = after;
        len_bytes.iter().try_fold(0usize, |acc, &b| {
            acc.checked_mul(256)?.checked_add(usize::from(b))
        })?
    };
    let (content, rest) = rest.split_at_checked(len)?;
    Some((Tlv { tag, content }, rest))
}

/// Iterates over the TLVs inside a constructed value's content.
pub(crate) fn children(content: &[u8]) -> impl Iterator<Item = Option<Tlv<'_>>> + '_ {
    let mut rest = content;
    let mut failed = false;
    core::iter::from_fn(move || {
        if rest.is_empty() || failed {
            return None;
        }
        match read_tlv(rest) {
            Some((tlv, after)) => {
                rest = after;
                Some(Some(tlv))
            }
            None => {
                failed = true;
                Some(None)
            }
        }
    })
}

/// DER of OID 2.5.29.17 (subjectAltName), content bytes only.
const OID_SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];

/// Why a certificate's names could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CertParseError {
    /// The bytes are not a DER X.509 certificate.
    Malformed,
    /// The certificate has no subjectAltName extension.
    NoSubjectAltName,
}

impl core::fmt::Display for CertParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            CertParseError::Malformed => "certificate is not valid DER X.509",
            CertParseError::NoSubjectAltName => "certificate has no subjectAltName extension",
        })
    }
}

/// Calls `f` with every URI subject-alternative name of a DER certificate.
///
/// Used to pin the gateway's SPIFFE identity: the caller compares each URI
/// as a parsed SPIFFE ID, so this only has to find the strings.
pub(crate) fn for_each_uri_san<'a>(
    cert_der: &'a [u8],
    mut f: impl FnMut(&'a [u8]),
) -> Result<(), CertParseError> {
    for_each_san(cert_der, |tag, value| {
        if tag == tag::GENERAL_NAME_URI {
            f(value);
        }
    })
}

/// The first dNSName subject-alternative name without a wildcard, if any.
pub(crate) fn first_dns_san(cert_der: &[u8]) -> Option<&[u8]> {
    let mut first = None;
    for_each_san(cert_der, |tag, value| {
        if tag == tag::GENERAL_NAME_DNS && first.is_none() && !value.contains(&b'*') {
            first = Some(value);
        }
    })
    .ok()?;
    first
}

/// Calls `f` with the tag and content of every subject-alternative name
/// (GeneralName) of a DER certificate.
fn for_each_san<'a>(
    cert_der: &'a [u8],
    mut f: impl FnMut(u8, &'a [u8]),
) -> Result<(), CertParseError> {
    use CertParseError::Malformed;
    let (cert, _) = read_tlv(cert_der).ok_or(Malformed)?;
    if cert.tag != tag::SEQUENCE {
        return Err(Malformed);
    }
    let (tbs, _) = read_tlv(cert.content).ok_or(Malformed)?;
    if tbs.tag != tag::SEQUENCE {
        return Err(Malformed);
    }
    // Extensions are the `[3]` element at the end of TBSCertificate.
    let mut extensions = None;
    for child in children(tbs.content) {
        let child = child.ok_or(Malformed)?;
        if child.tag == tag::CONTEXT_3 {
            extensions = Some(child.content);
        }
    }
    let extensions = extensions.ok_or(CertParseError::NoSubjectAltName)?;
    let (list, _) = read_tlv(extensions).ok_or(Malformed)?;
    let mut found = false;
    for ext in children(list.content) {
        let ext = ext.ok_or(Malformed)?;
        let mut parts = children(ext.content);
        let oid = parts.next().flatten().ok_or(Malformed)?;
        if oid.tag != tag::OID || oid.content != OID_SUBJECT_ALT_NAME {
            continue;
        }
        // `critical BOOLEAN DEFAULT FALSE` may come before the value.
        let value = parts
            .flatten()
            .find(|p| p.tag == tag::OCTET_STRING)
            .ok_or(Malformed)?;
        let (names, _) = read_tlv(value.content).ok_or(Malformed)?;
        if names.tag != tag::SEQUENCE {
            return Err(Malformed);
        }
        for name in children(names.content) {
            let name = name.ok_or(Malformed)?;
            f(name.tag, name.content);
        }
        found = true;
    }
    if found {
        Ok(())
    } else {
        Err(CertParseError::NoSubjectAltName)
    }
}

/// DER content of OID 2.5.29.19 (basicConstraints).
const OID_BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];

/// True when the certificate has basicConstraints with `cA` TRUE.
///
/// embedded-tls verifies chain signatures only; without this check any
/// end-entity certificate from the mesh CA could sign a forged
/// "gateway" certificate and present the pair as a chain.
pub(crate) fn is_ca(cert_der: &[u8]) -> bool {
    is_ca_inner(cert_der).unwrap_or(false)
}

fn is_ca_inner(cert_der: &[u8]) -> Option<bool> {
    let (cert, _) = read_tlv(cert_der)?;
    let (tbs, _) = read_tlv(cert.content)?;
    let extensions = children(tbs.content)
        .flatten()
        .find(|c| c.tag == tag::CONTEXT_3)?;
    let (list, _) = read_tlv(extensions.content)?;
    for ext in children(list.content) {
        let ext = ext?;
        let mut parts = children(ext.content);
        let oid = parts.next()??;
        if oid.tag != tag::OID || oid.content != OID_BASIC_CONSTRAINTS {
            continue;
        }
        let value = parts.flatten().find(|p| p.tag == tag::OCTET_STRING)?;
        let (constraints, _) = read_tlv(value.content)?;
        // SEQUENCE { cA BOOLEAN DEFAULT FALSE, pathLen INTEGER OPTIONAL }
        let first = children(constraints.content).next().flatten();
        return Some(matches!(
            first,
            Some(Tlv {
                tag: 0x01,
                content: [0xff]
            })
        ));
    }
    Some(false)
}

/// The subject public key (the BIT STRING's bytes, without the unused-bits
/// byte) of a DER certificate: for P-256, the SEC1 point.
pub(crate) fn subject_public_key(cert_der: &[u8]) -> Option<&[u8]> {
    let [.., spki] = tbs_fields(cert_der)?;
    if spki.tag != tag::SEQUENCE {
        return None;
    }
    // AlgorithmIdentifier, then the key as a BIT STRING.
    let mut parts = children(spki.content);
    let _alg = parts.next()??;
    let bits = parts.next()??;
    if bits.tag != tag::BIT_STRING {
        return None;
    }
    let (&unused, key) = bits.content.split_first()?;
    (unused == 0).then_some(key)
}

/// The first seven TBSCertificate fields, with an implicit v1 version
/// filled in so indices are fixed: version, serial, signature algorithm,
/// issuer, validity, subject, subjectPublicKeyInfo.
fn tbs_fields(cert_der: &[u8]) -> Option<[Tlv<'_>; 7]> {
    let (cert, _) = read_tlv(cert_der)?;
    let (tbs, _) = read_tlv(cert.content)?;
    let mut iter = children(tbs.content);
    let first = iter.next()??;
    let empty = Tlv {
        tag: tag::CONTEXT_0,
        content: &[],
    };
    let (version, serial) = if first.tag == tag::CONTEXT_0 {
        (first, iter.next()??)
    } else {
        (empty, first)
    };
    let mut out = [version, serial, empty, empty, empty, empty, empty];
    for slot in out.iter_mut().skip(2) {
        *slot = iter.next()??;
    }
    Some(out)
}

/// The issuer and subject `Name` contents of a DER certificate.
///
/// Used to pick, among the trust roots, the one whose subject is the
/// issuer of the server's top certificate (during a root roll-over the
/// node trusts two roots, and embedded-tls verifies against one).
pub(crate) fn issuer_and_subject(cert_der: &[u8]) -> Option<(&[u8], &[u8])> {
    let f = tbs_fields(cert_der)?;
    let [_, serial, _, issuer, _, subject, _] = f;
    if serial.tag != tag::INTEGER || issuer.tag != tag::SEQUENCE || subject.tag != tag::SEQUENCE {
        return None;
    }
    Some((issuer.content, subject.content))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_form_lengths_round_trip() {
        for len in [0usize, 1, 127, 128, 255, 256, 1000, 70_000] {
            let content = std::vec![0xabu8; len];
            let mut buf = std::vec![0u8; len + 8];
            let mut w = DerWriter::new(&mut buf);
            let m = w.mark();
            w.raw(&content).unwrap();
            w.close(m, tag::SEQUENCE).unwrap();
            let (tlv, rest) = read_tlv(w.written()).unwrap();
            assert_eq!(tlv.tag, tag::SEQUENCE);
            assert_eq!(tlv.content.len(), len);
            assert!(rest.is_empty());
        }
    }

    #[test]
    fn writer_reports_overflow_instead_of_panicking() {
        let mut buf = [0u8; 4];
        let mut w = DerWriter::new(&mut buf);
        assert_eq!(w.tlv(tag::OCTET_STRING, &[1, 2, 3]), Err(Overflow));
        let m = w.mark();
        w.raw(&[1, 2, 3]).unwrap();
        // Content fits but the header would not.
        assert_eq!(w.close(m, tag::SEQUENCE), Err(Overflow));
    }

    #[test]
    fn reader_rejects_truncated_and_oversized_lengths() {
        assert!(read_tlv(&[]).is_none());
        assert!(read_tlv(&[0x30]).is_none());
        assert!(read_tlv(&[0x30, 0x05, 1, 2]).is_none());
        assert!(read_tlv(&[0x30, 0x85, 1, 1, 1, 1, 1]).is_none());
        assert!(read_tlv(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert!(read_tlv(&[0x1f, 0x01, 0x00]).is_none());
        assert!(for_each_uri_san(&[0x30, 0x03, 0x30, 0x01], |_| {}).is_err());
    }
}
