//! The gateway's serving certificate names the hosts of the services it
//! routes (DNS SANs next to its SPIFFE ID), so a client that checks host
//! names — curl, Python's `ssl`, a browser — verifies the gateway with the
//! mesh roots (`ca.pem` from `meshgate cert issue`) and needs no `-k`.

use meshgate_e2e::{DETAILS_HOST, Gateway, PRODUCTPAGE_HOST, PRODUCTPAGE_ID, curl, python};

#[test]
fn curl_verifies_the_gateway_by_host_name_without_k() {
    let gw = Gateway::start();
    let client = gw.issue_cert(PRODUCTPAGE_ID, &gw.dir.path().join("client"), None);
    for (host, path) in [
        (DETAILS_HOST, "/details/0"),
        (PRODUCTPAGE_HOST, "/productpage"),
    ] {
        let (url, resolve) = gw.curl_target(host, path);
        let (code, out, err) = curl(&[
            "--cacert",
            &client.file("ca.pem"),
            "--cert",
            &client.file("chain.pem"),
            "--key",
            &client.file("key.pem"),
            "--resolve",
            &resolve,
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ]);
        assert_eq!(code, 0, "curl without -k to {host}: {err}");
        assert_eq!(out, "200", "{host}: {err}");
    }

    // The name is really checked: the same certificate is not valid for a
    // host the gateway does not serve.
    let code = format!(
        "import ssl,socket,sys\n\
         ctx=ssl.create_default_context(cafile='{ca}')\n\
         ctx.load_cert_chain('{chain}','{key}')\n\
         try:\n    ctx.wrap_socket(socket.create_connection(('127.0.0.1',{port})),server_hostname=sys.argv[1]).close()\n    print('ok')\n\
         except ssl.SSLCertVerificationError as e:\n    print('verify:', e.verify_message)\n\
         except Exception as e:\n    print('other:', e)\n",
        ca = client.file("ca.pem"),
        chain = client.file("chain.pem"),
        key = client.file("key.pem"),
        port = gw.http.port(),
    );
    let (rc, out, err) = python(&code, &[DETAILS_HOST]);
    assert_eq!((rc, out.trim()), (0, "ok"), "{err}");
    let (rc, out, err) = python(&code, &["ratings.bookinfo.svc.cluster.local"]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        out.contains("verify:") && out.to_lowercase().contains("hostname"),
        "a host the gateway does not route must fail the name check: {out}"
    );
}
