//! Public-API tests for `meshgate_core::mtls`: the full admission matrix
//! (effective mode × what the client presented), the pre-handshake client
//! auth helper and the TLS sniffer.

use meshgate_core::mtls::{
    Admitted, ClientAuth, EffectiveMode, MeshIdentity, MtlsMode, Presented, RejectAction,
    RejectReason, Sniffed, TlsAlert, TlsVersion, Transport, admit, sniff,
};
use meshgate_core::spiffe::{Principal, SpiffeError, SpiffeId, TrustDomain};

/// What a matrix cell must produce.
#[derive(Debug)]
enum Want {
    Admit(Transport, Option<&'static str>),
    Reject(RejectReason, RejectAction),
}

#[test]
fn admission_matrix() {
    use EffectiveMode::{Disable, Permissive, Strict};
    use Want::{Admit, Reject};

    let alias = [TrustDomain::parse("old.local").unwrap()];
    let mesh = MeshIdentity {
        trust_domain: TrustDomain::parse("cluster.local").unwrap(),
        aliases: &alias,
    };
    let mesh_peer = Presented::VerifiedPeer {
        id: SpiffeId::parse("spiffe://cluster.local/ns/bookinfo/sa/productpage").unwrap(),
    };
    let alias_peer = Presented::VerifiedPeer {
        id: SpiffeId::parse("spiffe://old.local/ns/legacy/sa/plc").unwrap(),
    };
    // A prefix of the mesh trust domain must not be mistaken for it.
    let foreign_peer = Presented::VerifiedPeer {
        id: SpiffeId::parse("spiffe://cluster.locali/ns/bookinfo/sa/productpage").unwrap(),
    };
    let odd_path_peer = Presented::VerifiedPeer {
        id: SpiffeId::parse("spiffe://cluster.local/host/plc-7").unwrap(),
    };
    let plain = Presented::Plaintext;
    let tls13 = Presented::TlsWithoutCertificate {
        version: TlsVersion::Tls13,
    };
    let tls12 = Presented::TlsWithoutCertificate {
        version: TlsVersion::Tls12,
    };
    let untrusted = Presented::UnverifiedCertificate;
    let no_id = Presented::VerifiedWithoutSpiffeId;

    let pp = Some("cluster.local/ns/bookinfo/sa/productpage");
    let plc = Some("old.local/ns/legacy/sa/plc");
    let bad_cert = RejectAction::Alert(TlsAlert::BadCertificate);
    let not_wl = RejectReason::NotAWorkloadIdentity(SpiffeError::NotIstioPrincipal);

    let matrix: Vec<(EffectiveMode, Presented<'_>, Want)> = vec![
        // DISABLE: nothing is terminated, nothing is authenticated.
        (Disable, plain, Admit(Transport::Passthrough, None)),
        (Disable, tls13, Admit(Transport::Passthrough, None)),
        (Disable, tls12, Admit(Transport::Passthrough, None)),
        (Disable, untrusted, Admit(Transport::Passthrough, None)),
        (Disable, no_id, Admit(Transport::Passthrough, None)),
        (Disable, mesh_peer, Admit(Transport::Passthrough, None)),
        (Disable, alias_peer, Admit(Transport::Passthrough, None)),
        (Disable, foreign_peer, Admit(Transport::Passthrough, None)),
        (Disable, odd_path_peer, Admit(Transport::Passthrough, None)),
        // PERMISSIVE: anything without a certificate gets in anonymously;
        // a certificate that is shown must be the mesh's.
        (Permissive, plain, Admit(Transport::Plaintext, None)),
        (Permissive, tls13, Admit(Transport::Tls, None)),
        (Permissive, tls12, Admit(Transport::Tls, None)),
        (
            Permissive,
            untrusted,
            Reject(RejectReason::UntrustedCertificate, bad_cert),
        ),
        (
            Permissive,
            no_id,
            Reject(RejectReason::NoSpiffeId, bad_cert),
        ),
        (Permissive, mesh_peer, Admit(Transport::Mtls, pp)),
        (Permissive, alias_peer, Admit(Transport::Mtls, plc)),
        (
            Permissive,
            foreign_peer,
            Reject(RejectReason::ForeignTrustDomain, bad_cert),
        ),
        (Permissive, odd_path_peer, Reject(not_wl, bad_cert)),
        // STRICT: only a verified mesh identity.
        (
            Strict,
            plain,
            Reject(
                RejectReason::PlaintextUnderStrict,
                RejectAction::CloseSilently,
            ),
        ),
        (
            Strict,
            tls13,
            Reject(
                RejectReason::MissingClientCertificate,
                RejectAction::Alert(TlsAlert::CertificateRequired),
            ),
        ),
        (
            Strict,
            tls12,
            Reject(
                RejectReason::MissingClientCertificate,
                RejectAction::Alert(TlsAlert::HandshakeFailure),
            ),
        ),
        (
            Strict,
            untrusted,
            Reject(RejectReason::UntrustedCertificate, bad_cert),
        ),
        (Strict, no_id, Reject(RejectReason::NoSpiffeId, bad_cert)),
        (Strict, mesh_peer, Admit(Transport::Mtls, pp)),
        (Strict, alias_peer, Admit(Transport::Mtls, plc)),
        (
            Strict,
            foreign_peer,
            Reject(RejectReason::ForeignTrustDomain, bad_cert),
        ),
        (Strict, odd_path_peer, Reject(not_wl, bad_cert)),
    ];
    assert_eq!(matrix.len(), 3 * 9, "every mode x presented cell is listed");

    for (mode, presented, want) in matrix {
        let got = admit(mode, presented, &mesh);
        match (&want, got) {
            (
                Admit(transport, principal),
                Ok(Admitted {
                    principal: p,
                    transport: t,
                }),
            ) => {
                assert_eq!(t, *transport, "{mode} {presented:?}");
                assert_eq!(p.map(|p| p.as_str()), *principal, "{mode} {presented:?}");
            }
            (Reject(reason, action), Err(r)) => {
                assert_eq!(r.reason, *reason, "{mode} {presented:?}");
                assert_eq!(r.action, *action, "{mode} {presented:?}");
            }
            (want, got) => panic!("{mode} {presented:?}: want {want:?}, got {got:?}"),
        }
    }
}

#[test]
fn admitted_principal_is_the_parsed_peer() {
    let mesh = MeshIdentity::new(TrustDomain::parse("cluster.local").unwrap());
    let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
    let ok = admit(EffectiveMode::Strict, Presented::VerifiedPeer { id }, &mesh).unwrap();
    assert_eq!(
        ok.principal,
        Some(Principal::parse("cluster.local/ns/a/sa/b").unwrap())
    );
}

#[test]
fn alert_codes_are_the_rfc_values() {
    assert_eq!(TlsAlert::CertificateRequired.code(), 116);
    assert_eq!(TlsAlert::HandshakeFailure.code(), 40);
    assert_eq!(TlsAlert::BadCertificate.code(), 42);
}

#[test]
fn client_auth_per_mode() {
    assert_eq!(
        ClientAuth::for_mode(EffectiveMode::Disable),
        ClientAuth::NotTerminated
    );
    assert_eq!(
        ClientAuth::for_mode(EffectiveMode::Permissive),
        ClientAuth::Optional
    );
    assert_eq!(
        ClientAuth::for_mode(EffectiveMode::Strict),
        ClientAuth::Required
    );
    assert!(ClientAuth::Optional.accepts_plaintext());
    assert!(ClientAuth::NotTerminated.accepts_plaintext());
    assert!(!ClientAuth::Required.accepts_plaintext());
}

#[test]
fn modes_inherit_and_print() {
    assert_eq!(MtlsMode::Unset.effective(), None);
    assert_eq!(
        MtlsMode::Unset.or_inherit(EffectiveMode::Strict),
        EffectiveMode::Strict
    );
    assert_eq!(
        MtlsMode::Disable.or_inherit(EffectiveMode::Strict),
        EffectiveMode::Disable
    );
    assert_eq!(MtlsMode::Strict.effective(), Some(EffectiveMode::Strict));
    assert_eq!(
        MtlsMode::from(EffectiveMode::Permissive),
        MtlsMode::Permissive
    );
    assert_eq!(EffectiveMode::DEFAULT, EffectiveMode::Permissive);
    assert_eq!(MtlsMode::Unset.to_string(), "UNSET");
    assert_eq!(EffectiveMode::Strict.to_string(), "STRICT");
}

#[test]
fn sniffing_tells_tls_from_plaintext() {
    assert_eq!(sniff(&[]), Sniffed::NeedMore);
    assert_eq!(sniff(&[0x16]), Sniffed::NeedMore);
    assert_eq!(sniff(&[0x16, 0x03, 0x01, 0x02, 0x00]), Sniffed::Tls);
    assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Sniffed::Plaintext);
    assert_eq!(sniff(&[0x16, 0x02]), Sniffed::Plaintext);
    assert_eq!(sniff(b"PRI * HTTP/2.0"), Sniffed::Plaintext);
}

#[test]
fn rejection_display_names_the_reason() {
    let mesh = MeshIdentity::new(TrustDomain::parse("cluster.local").unwrap());
    let r = admit(EffectiveMode::Strict, Presented::Plaintext, &mesh).unwrap_err();
    assert_eq!(r.to_string(), "plaintext connection to a STRICT mTLS port");
}
