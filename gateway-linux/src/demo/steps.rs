//! The walkthrough `meshgate demo` prints: the seed's steps as commands
//! that work as printed against the running demo.
//!
//! Built as a pure function of where things listen and where files are, so
//! the exact text is unit-tested here and replayed by the end-to-end tests.

use core::fmt::Write as _;
use core::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use super::files::{DemoDir, Topology};

use super::bookinfo::{DETAILS_HOST, PRODUCTPAGE_HOST};

/// The line printed last, once every command below it works.
pub(crate) const READY_LINE: &str = "meshgate demo: ready (Ctrl-C stops the gateway and bookinfo)";

/// What the walkthrough needs to know.
pub(crate) struct Walkthrough<'a> {
    /// How to run the meshgate binary (`meshgate` when it is on PATH).
    pub(crate) meshgate: String,
    pub(crate) dir: &'a DemoDir,
    pub(crate) topology: &'a Topology,
    /// The admin token, for the UI.
    pub(crate) token: &'a str,
    /// How curl should check the gateway's server certificate in the mTLS
    /// steps (see [`ServerCheck`]).
    pub(crate) server_check: ServerCheck,
}

/// How the printed mTLS curl commands treat the gateway's certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerCheck {
    /// The gateway's certificate names the service host: `--cacert ca.pem`.
    CaCert,
    /// It carries only the gateway's SPIFFE ID, which curl cannot check:
    /// `-k` (the client certificate is still required and verified).
    Insecure,
}

/// Quotes `s` for a POSIX shell when it needs quoting.
pub(crate) fn sh(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./:@%+=,-".contains(c));
    if safe {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

fn shp(p: &Path) -> String {
    sh(&p.display().to_string())
}

/// The address clients on this host dial for a listen address.
pub(crate) fn dial_addr(a: SocketAddr) -> SocketAddr {
    let ip = match a.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, a.port())
}

impl Walkthrough<'_> {
    /// The URL and `--resolve` for `host` and `path` on the first listener.
    fn target(&self, scheme: &str, host: &str, path: &str) -> String {
        let gw = self
            .topology
            .listen
            .first()
            .copied()
            .map_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9080)), dial_addr);
        let ip = match gw.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        format!(
            "{scheme}://{host}:{port}{path} --resolve {host}:{port}:{ip}",
            port = gw.port()
        )
    }

    /// The admin flags every meshgate client command needs here.
    fn admin_flags(&self) -> String {
        let mut f = String::new();
        let admin = dial_addr(self.topology.admin);
        if admin != SocketAddr::from(([127, 0, 0, 1], 15000)) {
            let _ = write!(f, " --admin http://{admin}");
        }
        let _ = write!(f, " --data-dir {}", shp(&self.dir.data()));
        f
    }

    fn mtls_flags(&self, name: &str) -> String {
        let d = self.dir.certs(name);
        let server = match self.server_check {
            ServerCheck::CaCert => format!("--cacert {}", shp(&d.join("ca.pem"))),
            ServerCheck::Insecure => "-k".to_owned(),
        };
        format!(
            "--cert {} --key {} {server}",
            shp(&d.join("chain.pem")),
            shp(&d.join("key.pem"))
        )
    }

    /// The seed's python call from inside the productpage pod: to details
    /// through productpage's sidecar (its port's `/details/` path).
    fn python_details(&self) -> String {
        let pp = dial_addr(self.topology.productpage);
        format!(
            "python3 -c 'import urllib.request; print(urllib.request.urlopen(\"http://{pp}/details/1\").read())'"
        )
    }

    /// productpage's page, which calls details the same way.
    fn curl_productpage(&self) -> String {
        format!(
            "curl http://{}/productpage",
            dial_addr(self.topology.productpage)
        )
    }

    /// The full text.
    pub(crate) fn render(&self) -> String {
        let t = self.topology;
        let mg = &self.meshgate;
        let admin_url = format!("http://{}/", dial_addr(t.admin));
        let listen: Vec<String> = t.listen.iter().map(ToString::to_string).collect();
        let mut s = String::new();
        let w = &mut s;
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "=== meshgate demo: Securing Services with Mutual TLS (bookinfo) ==="
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "  gateway      {} routes {DETAILS_HOST} and {PRODUCTPAGE_HOST} (Host/SNI)",
            listen.join(", ")
        );
        let _ = writeln!(w, "  admin + UI   {admin_url}");
        let _ = writeln!(w, "  admin token  {}", self.token);
        let _ = writeln!(
            w,
            "  details      {} (plaintext workload, app=details, sa bookinfo-details)",
            t.details
        );
        let _ = writeln!(
            w,
            "  productpage  {} (calls details through the gateway with mTLS as cluster.local/ns/bookinfo/sa/bookinfo-productpage)",
            t.productpage
        );
        let _ = writeln!(
            w,
            "  files        {} (settings, policies to apply), client certificates in {}",
            shp(&self.dir.root),
            shp(&self.dir.root.join("certs"))
        );
        let _ = writeln!(
            w,
            "  gateway data {} (CA and applied policies; no workload keys)",
            shp(&self.dir.data())
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "Run these in another shell, from the directory you started the demo in."
        );

        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "1. A legacy client outside the mesh uses the details API in plaintext (works):"
        );
        let _ = writeln!(
            w,
            "   curl {}",
            self.target("http", DETAILS_HOST, "/details/1")
        );
        let _ = writeln!(
            w,
            "   curl {}",
            self.target("http", DETAILS_HOST, "/details/100")
        );
        let _ = writeln!(
            w,
            "   Inside the productpage pod (python, as in the seed) the app reaches details; its sidecar sends it with mTLS:"
        );
        let _ = writeln!(w, "   {}", self.python_details());
        let _ = writeln!(
            w,
            "   {}      # the product page, built from details",
            self.curl_productpage()
        );

        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "2. Require mutual TLS for every service in the bookinfo namespace:"
        );
        let _ = writeln!(
            w,
            "   {mg} apply -f {}{}",
            shp(&self.dir.mutual_tls()),
            self.admin_flags()
        );
        let _ = writeln!(
            w,
            "   {mg} check {DETAILS_HOST} --port 9080{}",
            self.admin_flags()
        );

        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "3. The legacy plaintext call now fails (no HTTP answer: the server requires a TLS certificate):"
        );
        let _ = writeln!(
            w,
            "   curl {}",
            self.target("http", DETAILS_HOST, "/details/100")
        );
        let _ = writeln!(
            w,
            "   The components in bookinfo still communicate (productpage -> details is mTLS):"
        );
        let _ = writeln!(w, "   {}", self.python_details());
        let _ = writeln!(w, "   {}", self.curl_productpage());

        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "4. TLS without a client certificate fails with the alert \"certificate required\":"
        );
        let _ = writeln!(
            w,
            "   curl -k {}",
            self.target("https", DETAILS_HOST, "/details/100")
        );
        let _ = writeln!(
            w,
            "   Workload keys live in memory only; the gateway's disk holds the CA and policies, no workload certificates:"
        );
        let _ = writeln!(w, "   ls -R {}", shp(&self.dir.data()));

        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "5. Bring the legacy client into the mesh with its own identity (the key is generated locally; the gateway signs a CSR):"
        );
        let _ = writeln!(
            w,
            "   {mg} cert issue --spiffe-id spiffe://cluster.local/ns/bookinfo/sa/sleep --out {}{}",
            shp(&self.dir.certs("sleep")),
            self.admin_flags()
        );
        let _ = writeln!(
            w,
            "   curl {} {}",
            self.mtls_flags("sleep"),
            self.target("https", DETAILS_HOST, "/details/100")
        );
        if self.server_check == ServerCheck::Insecure {
            let _ = writeln!(
                w,
                "   (-k: the gateway's certificate names only its SPIFFE ID, which curl cannot check; your client certificate is still required and verified)"
            );
        }

        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "6. Security in depth: any valid mesh certificate is not enough. Allow only productpage to read details:"
        );
        let _ = writeln!(
            w,
            "   {mg} apply -f {}{}",
            shp(&self.dir.details_viewer()),
            self.admin_flags()
        );
        let _ = writeln!(
            w,
            "   curl {} {}      # 403 RBAC: access denied",
            self.mtls_flags("sleep"),
            self.target("https", DETAILS_HOST, "/details/100")
        );
        let _ = writeln!(
            w,
            "   curl {} {}      # 200",
            self.mtls_flags("productpage"),
            self.target("https", DETAILS_HOST, "/details/100")
        );
        let _ = writeln!(
            w,
            "   curl {} {}      # 200: sleep may see productpage, productpage reads details",
            self.mtls_flags("sleep"),
            self.target("https", PRODUCTPAGE_HOST, "/productpage")
        );
        let _ = writeln!(
            w,
            "   {}      # 200: productpage's identity is allowed",
            self.python_details()
        );

        let _ = writeln!(w);
        let _ = writeln!(w, "Start over: stop with Ctrl-C and run the demo again.");
        let _ = writeln!(w, "{READY_LINE}");
        s
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn walkthrough(topology: &Topology, dir: &DemoDir, check: ServerCheck) -> String {
        Walkthrough {
            meshgate: "meshgate".to_owned(),
            dir,
            topology,
            token: "mgt_TOKEN",
            server_check: check,
        }
        .render()
    }

    fn topology(listen: &str, admin: &str) -> Topology {
        Topology {
            listen: vec![listen.parse().expect("addr")],
            admin: admin.parse().expect("addr"),
            details: "127.0.0.1:19080".parse().expect("addr"),
            productpage: "127.0.0.1:19081".parse().expect("addr"),
            gateway_id: "spiffe://cluster.local/ns/meshgate-system/sa/meshgate".to_owned(),
        }
    }

    #[test]
    fn defaults_print_the_seed_commands() {
        let dir = DemoDir {
            root: PathBuf::from("meshgate-demo"),
        };
        let text = walkthrough(
            &topology("127.0.0.1:9080", "127.0.0.1:15000"),
            &dir,
            ServerCheck::CaCert,
        );
        for line in [
            "curl http://details.bookinfo.svc.cluster.local:9080/details/1 --resolve details.bookinfo.svc.cluster.local:9080:127.0.0.1",
            "curl http://details.bookinfo.svc.cluster.local:9080/details/100 --resolve details.bookinfo.svc.cluster.local:9080:127.0.0.1",
            "meshgate apply -f meshgate-demo/mutual-tls.yaml --data-dir meshgate-demo/data",
            "curl -k https://details.bookinfo.svc.cluster.local:9080/details/100 --resolve details.bookinfo.svc.cluster.local:9080:127.0.0.1",
            "meshgate cert issue --spiffe-id spiffe://cluster.local/ns/bookinfo/sa/sleep --out meshgate-demo/certs/sleep --data-dir meshgate-demo/data",
            "curl --cert meshgate-demo/certs/sleep/chain.pem --key meshgate-demo/certs/sleep/key.pem --cacert meshgate-demo/certs/sleep/ca.pem https://details.bookinfo.svc.cluster.local:9080/details/100",
            "meshgate apply -f meshgate-demo/details-viewer.yaml --data-dir meshgate-demo/data",
            "urlopen(\"http://127.0.0.1:19081/details/1\")",
            "curl http://127.0.0.1:19081/productpage",
            "admin + UI   http://127.0.0.1:15000/",
            "admin token  mgt_TOKEN",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(text.trim_end().ends_with(READY_LINE));
        assert!(!text.contains("--admin "), "default admin needs no flag");
    }

    #[test]
    fn overrides_show_in_every_command() {
        let dir = DemoDir {
            root: PathBuf::from("/tmp/my demo"),
        };
        let text = walkthrough(
            &topology("0.0.0.0:18080", "127.0.0.1:25000"),
            &dir,
            ServerCheck::Insecure,
        );
        assert!(text.contains(
            "http://details.bookinfo.svc.cluster.local:18080/details/1 --resolve details.bookinfo.svc.cluster.local:18080:127.0.0.1"
        ));
        assert!(text.contains(
            "apply -f '/tmp/my demo/mutual-tls.yaml' --admin http://127.0.0.1:25000 --data-dir '/tmp/my demo/data'"
        ));
        assert!(text.contains("--key '/tmp/my demo/certs/sleep/key.pem' -k https://"));
        assert!(!text.contains("--cacert"));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(sh("meshgate-demo/data"), "meshgate-demo/data");
        assert_eq!(sh("a b"), "'a b'");
        assert_eq!(sh("it's"), r"'it'\''s'");
        assert_eq!(sh(""), "''");
    }

    #[test]
    fn ipv6_listeners_resolve_with_brackets() {
        let dir = DemoDir {
            root: PathBuf::from("d"),
        };
        let text = walkthrough(
            &topology("[::]:9080", "[::1]:15000"),
            &dir,
            ServerCheck::CaCert,
        );
        assert!(text.contains("--resolve details.bookinfo.svc.cluster.local:9080:[::1]"));
        assert!(text.contains("--admin http://[::1]:15000"));
    }
}
