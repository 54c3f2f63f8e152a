use super::*;

fn pairs(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn keys(problems: &Problems) -> Vec<&str> {
    problems.iter().map(|(k, _)| k.as_str()).collect()
}

#[test]
fn defaults_are_self_signed_on_loopback() -> Result<(), Problems> {
    let s = from_pairs(&pairs(&[("idle-timeout", "5m")]))?;
    assert_eq!(s.source, TlsSource::SelfSigned);
    assert_eq!(s.listen.to_string(), DEFAULT_TLS_LISTEN);
    assert_eq!(s.hsts, None);
    Ok(())
}

#[test]
fn acme_rfc2136_parses_fully() -> Result<(), Problems> {
    let s = from_pairs(&pairs(&[
        ("tls-source", "acme"),
        ("tls-dir", "/var/lib/wakegate/tls"),
        ("acme-directory", "letsencrypt-staging"),
        ("acme-email", "ops@example.com"),
        ("acme-eab-kid", "kid-1"),
        ("acme-eab-hmac", "c2VjcmV0LWJ5dGVz"),
        ("rfc2136-server", "10.0.0.53"),
        ("rfc2136-tsig-key", "acme-key"),
        ("rfc2136-tsig-algorithm", "hmac-sha512"),
        ("rfc2136-tsig-secret", "c2VjcmV0"),
        ("acme-propagation-timeout", "90s"),
        ("hsts", "on"),
    ]))?;
    assert_eq!(s.hsts, Some(DEFAULT_HSTS_MAX_AGE));
    let TlsSource::Acme(a) = s.source else { panic!("not acme") };
    assert!(a.directory.contains("staging"));
    assert_eq!(a.eab.map(|e| e.hmac_key), Some(b"secret-bytes".to_vec()));
    assert_eq!(a.propagation_timeout, Duration::from_secs(90));
    match a.dns {
        DnsSettings::Rfc2136 { server, zone, key } => {
            assert_eq!(server, "10.0.0.53:53");
            assert_eq!(zone, None);
            assert_eq!((key.name.as_str(), key.algorithm, key.secret), ("acme-key", TsigAlgorithm::HmacSha512, b"secret".to_vec()));
        }
        other => panic!("{other:?}"),
    }
    Ok(())
}

#[test]
fn every_problem_is_reported_and_a_missing_secret_names_its_key() {
    let err = from_pairs(&pairs(&[
        ("tls-source", "acme"),
        ("tls-listen", "nowhere"),
        ("acme-directory", "http://insecure"),
        ("acme-eab-kid", "k"),
        ("rfc2136-server", "bad host:x"),
        ("rfc2136-tsig-key", "acme-key"),
        ("acme-propagation-delay", "soon"),
        ("hsts", "maybe"),
    ]));
    let Err(problems) = err else { panic!("accepted") };
    let mut k = keys(&problems);
    k.sort_unstable();
    assert_eq!(
        k,
        [
            "acme-directory",
            "acme-eab-hmac",
            "acme-propagation-delay",
            "hsts",
            "rfc2136-server",
            "rfc2136-tsig-secret",
            "tls-dir",
            "tls-listen"
        ]
    );
    let secret = problems.iter().find(|(k, _)| k == "rfc2136-tsig-secret").map(|(_, r)| r.as_str());
    assert!(secret.is_some_and(|r| r.contains("\"acme-key\"")), "{secret:?}");
    let listen = problems.iter().find(|(k, _)| k == "tls-listen").map(|(_, r)| r.as_str());
    assert!(listen.is_some_and(|r| r.contains("\"nowhere\"") && r.contains("127.0.0.1:8443")), "{listen:?}");
}

#[test]
fn files_and_exec_need_their_paths() {
    let Err(p) = from_pairs(&pairs(&[("tls-source", "files"), ("tls-cert-file", "/c.pem")])) else { panic!() };
    assert_eq!(keys(&p), ["tls-key-file"]);
    let Err(p) = from_pairs(&pairs(&[
        ("tls-source", "acme"),
        ("tls-dir", "/d"),
        ("acme-directory", "https://ca/dir"),
        ("acme-dns-provider", "exec"),
    ])) else {
        panic!()
    };
    assert_eq!(keys(&p), ["acme-exec-command"]);
}

#[test]
fn servers_and_nameservers() {
    assert_eq!(parse_server("ns1.example.com"), Ok("ns1.example.com:53".into()));
    assert_eq!(parse_server("127.0.0.1:15353"), Ok("127.0.0.1:15353".into()));
    assert_eq!(parse_server("::1"), Ok("[::1]:53".into()));
    assert!(parse_server("a b").is_err());
    assert_eq!(parse_ip_port("127.0.0.1:53").map(|a| a.port()), Ok(53));
    assert!(parse_ip_port("ns1:53").is_err());
}

#[tokio::test]
async fn acme_config_checks_the_rfc2136_server_by_default() -> Result<(), Box<dyn std::error::Error>> {
    let s = from_pairs(&pairs(&[
        ("tls-source", "acme"),
        ("tls-dir", "/d"),
        ("acme-directory", "https://127.0.0.1:14000/dir"),
        ("rfc2136-server", "127.0.0.1:15353"),
        ("rfc2136-tsig-key", "k"),
        ("rfc2136-tsig-secret", "c2VjcmV0"),
    ]))
    .map_err(|p| format!("{p:?}"))?;
    let c = s.acme_config("aim.test").await.ok_or("not acme")??;
    assert_eq!(c.nameservers, vec!["127.0.0.1:15353".parse::<SocketAddr>()?]);
    assert_eq!((c.zone.as_str(), c.base.as_str()), ("aim.test", "aim.test"));
    assert!(s.dns_provider("aim.test").ok_or("no provider")?.is_ok());
    Ok(())
}

#[test]
fn credentials_may_come_from_files_of_a_mounted_secret() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (tsig, hmac) = (dir.path().join("tsig-secret"), dir.path().join("eab-hmac"));
    std::fs::write(&tsig, "c2VjcmV0\n")?;
    std::fs::write(&hmac, "c2VjcmV0LWJ5dGVz\n")?;
    let base = [
        ("tls-source", "acme"),
        ("tls-dir", "/var/lib/wakegate/tls"),
        ("acme-directory", "letsencrypt-staging"),
        ("acme-eab-kid", "kid-1"),
        ("rfc2136-server", "10.0.0.53"),
        ("rfc2136-tsig-key", "acme-key"),
    ];
    let (tsig_s, hmac_s) = (tsig.display().to_string(), hmac.display().to_string());
    let mut kv = base.to_vec();
    kv.extend([("rfc2136-tsig-secret-file", tsig_s.as_str()), ("acme-eab-hmac-file", hmac_s.as_str())]);
    let s = from_pairs(&pairs(&kv)).map_err(|p| format!("{p:?}"))?;
    let TlsSource::Acme(a) = s.source else { panic!("not acme") };
    assert_eq!(a.eab.map(|e| e.hmac_key), Some(b"secret-bytes".to_vec()));
    let DnsSettings::Rfc2136 { key, .. } = a.dns else { panic!("not rfc2136") };
    assert_eq!(key.secret, b"secret".to_vec());

    // Both ways at once, a file that is missing, a file that is empty: each named by its key.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n")?;
    let empty_s = empty.display().to_string();
    let mut kv = base.to_vec();
    kv.extend([
        ("rfc2136-tsig-secret", "c2VjcmV0"),
        ("rfc2136-tsig-secret-file", tsig_s.as_str()),
        ("acme-eab-hmac-file", "/nonexistent/eab"),
    ]);
    let problems = from_pairs(&pairs(&kv)).expect_err("refused");
    assert_eq!(keys(&problems), ["acme-eab-hmac-file", "rfc2136-tsig-secret-file"], "{problems:?}");
    let mut kv = base.to_vec();
    kv.extend([("rfc2136-tsig-secret-file", empty_s.as_str()), ("acme-eab-hmac", "c2VjcmV0LWJ5dGVz")]);
    let problems = from_pairs(&pairs(&kv)).expect_err("refused");
    assert!(problems.iter().any(|(k, r)| k == "rfc2136-tsig-secret-file" && r.contains("is empty")), "{problems:?}");
    Ok(())
}
