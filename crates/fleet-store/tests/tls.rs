//! The etcd store over TLS with client certificates (fleet's `etcd_cafile`,
//! `etcd_certfile`, `etcd_keyfile`): a real etcd on a loopback port with
//! `--client-cert-auth`, and certificates made for the test with the openssl tool. Needs
//! the `tls` feature (`cargo test -p fleet-store --features tls --test tls`, which
//! `scripts/test.sh` runs); without it, TLS settings are refused.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::disallowed_methods
)]

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn a_build_without_tls_refuses_tls_settings() {
    let tls = fleet_store::EtcdTls {
        ca: Some("/etc/ssl/etcd/ca.pem".into()),
        ..fleet_store::EtcdTls::default()
    };
    let r = fleet_store::EtcdStore::connect_tls(
        &["https://127.0.0.1:2379".to_string()],
        std::time::Duration::from_secs(1),
        &tls,
    )
    .await;
    assert!(matches!(r, Err(fleet_store::StoreError::TlsUnsupported)));
}

#[cfg(feature = "tls")]
mod with_tls {

    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::time::Duration;

    use fleet_store::testing::LocalEtcd;
    use fleet_store::{EtcdStore, EtcdTls, KvStore, StoreError};

    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl (Debian's openssl, with ca-certificates) must be installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
    fn certificates(dir: &Path) {
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca = vec!["req", "-x509"];
        ca.extend(key);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=test-ca",
        ]);
        openssl(dir, &ca);
        for (name, ext) in [
            (
                "server",
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
            ),
            ("client", "extendedKeyUsage=clientAuth\n"),
        ] {
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            let mut req = vec!["req"];
            req.extend(key);
            let (k, csr, pem, e) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.pem"),
                format!("{name}.ext"),
            );
            req.extend(["-keyout", &k, "-out", &csr, "-subj", "/CN=etcd-test"]);
            openssl(dir, &req);
            openssl(
                dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    "ca.pem",
                    "-CAkey",
                    "ca.key",
                    "-CAcreateserial",
                    "-out",
                    &pem,
                    "-days",
                    "1",
                    "-extfile",
                    &e,
                ],
            );
        }
    }

    /// An etcd that serves clients only over TLS with client certificates.
    struct Etcd {
        etcd: LocalEtcd,
        dir: tempfile::TempDir,
    }

    impl Etcd {
        fn start() -> Self {
            let dir = tempfile::tempdir().unwrap();
            certificates(dir.path());
            let p = |f: &str| dir.path().join(f).display().to_string();
            let args = [
                "--cert-file".to_string(),
                p("server.pem"),
                "--key-file".into(),
                p("server.key"),
                "--client-cert-auth".into(),
                "--trusted-ca-file".into(),
                p("ca.pem"),
            ];
            let etcd = LocalEtcd::start(dir.path(), "https", &args)
                .expect("etcd (Debian etcd-server) must be installed: scripts/install-deps.sh");
            Self { etcd, dir }
        }

        fn file(&self, name: &str) -> Option<PathBuf> {
            Some(self.dir.path().join(name))
        }
    }

    #[tokio::test]
    async fn etcd_over_tls_with_a_client_certificate() {
        let e = Etcd::start();
        let tls = EtcdTls {
            ca: e.file("ca.pem"),
            cert: e.file("client.pem"),
            key: e.file("client.key"),
        };
        let endpoints = [e.etcd.endpoint.clone()];
        let timeout = Duration::from_secs(2);
        let store = e
            .etcd
            .store(timeout, &tls, 100)
            .await
            .unwrap_or_else(|| panic!("no TLS connection to {}", e.etcd.endpoint));
        store
            .put("/tls/probe", b"yes".to_vec(), None)
            .await
            .unwrap();
        assert_eq!(
            store.get("/tls/probe").await.unwrap().unwrap().value,
            b"yes".to_vec()
        );

        // Without a client certificate etcd refuses.
        let no_cert = EtcdTls {
            ca: e.file("ca.pem"),
            ..EtcdTls::default()
        };
        let refused = match EtcdStore::connect_tls(&endpoints, timeout, &no_cert).await {
            Ok(s) => s.get("/tls/probe").await.is_err(),
            Err(_) => true,
        };
        assert!(refused, "etcd answered a client without a certificate");

        // Settings that cannot work fail at once, naming what is wrong.
        let half = EtcdTls {
            cert: e.file("client.pem"),
            ..EtcdTls::default()
        };
        assert!(matches!(
            EtcdStore::connect_tls(&endpoints, timeout, &half).await,
            Err(StoreError::TlsPair)
        ));
        let missing = EtcdTls {
            ca: e.file("nope.pem"),
            ..EtcdTls::default()
        };
        match EtcdStore::connect_tls(&endpoints, timeout, &missing).await {
            Err(err @ StoreError::TlsFile { .. }) => {
                assert!(err.to_string().contains("nope.pem"), "{err}")
            }
            other => panic!("{:?}", other.err()),
        }
    }
}
