//! Properties of host normalisation (`router::normalize_host`), which every
//! request's routing goes through: on any input it returns without panicking;
//! when it accepts a host, a second pass changes nothing and the result has no
//! ASCII upper case, no trailing dot and no port; a valid host in any spelling
//! routes as itself; text that is no host is refused (`None`).

use proptest::prelude::*;
use wakegate::router::normalize_host;

/// Whether `host` still ends with a port (`:` and digits), outside an IPv6 literal.
fn has_port(host: &str) -> bool {
    if host.starts_with('[') {
        // A bracketed literal ends at its `]`: anything after it is a port.
        return host.find(']').is_some_and(|i| i + 1 < host.len());
    }
    host.rsplit_once(':').is_some_and(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
}

fn check(raw: &str) -> Result<(), TestCaseError> {
    let Some(once) = normalize_host(raw) else { return Ok(()) };
    let twice = normalize_host(&once);
    prop_assert_eq!(twice.as_deref(), Some(&*once), "idempotent: {:?} -> {:?} -> {:?}", raw, once, twice);
    prop_assert!(!once.bytes().any(|b| b.is_ascii_uppercase()), "upper case left: {:?} -> {:?}", raw, once);
    prop_assert!(!once.ends_with('.'), "trailing dot left: {:?} -> {:?}", raw, once);
    prop_assert!(!has_port(&once), "port left: {:?} -> {:?}", raw, once);
    Ok(())
}

/// A valid DNS name: 1–4 labels of letters, digits and inner hyphens.
fn dns_name() -> impl Strategy<Value = String> {
    prop::collection::vec("[a-zA-Z0-9]([a-zA-Z0-9-]{0,10}[a-zA-Z0-9])?", 1..5).prop_map(|labels| labels.join("."))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn any_text(raw in any::<String>()) {
        check(&raw)?;
    }

    #[test]
    fn host_like_text(raw in "[a-zA-Z0-9.:\\[\\]-]{0,40}") {
        check(&raw)?;
    }

    #[test]
    fn valid_hosts_in_any_spelling_normalise_to_themselves(name in dns_name(), dot in any::<bool>(), port in proptest::option::of(any::<u16>())) {
        let mut raw = name.clone();
        if dot {
            raw.push('.');
        }
        if let Some(p) = port {
            raw.push_str(&format!(":{p}"));
        }
        let expected = name.to_ascii_lowercase();
        let got = normalize_host(&raw);
        prop_assert_eq!(got.as_deref(), Some(expected.as_str()));
        check(&raw)?;
    }

    #[test]
    fn two_ports_or_empty_labels_are_no_host(name in dns_name(), a in any::<u16>(), b in any::<u16>()) {
        let two_ports = format!("{name}:{a}:{b}");
        let double_dot = format!("{name}..");
        prop_assert_eq!(normalize_host(&two_ports), None);
        prop_assert_eq!(normalize_host(&double_dot), None);
    }

    #[test]
    fn ipv6_literals_keep_their_brackets(segments in prop::collection::vec(any::<u16>(), 8), port in proptest::option::of(any::<u16>())) {
        let ip = std::net::Ipv6Addr::from(std::array::from_fn::<u16, 8, _>(|i| segments[i]));
        let literal = format!("[{ip}]");
        let raw = port.map_or(literal.clone(), |p| format!("{literal}:{p}"));
        let got = normalize_host(&raw);
        prop_assert_eq!(got.as_deref(), Some(literal.as_str()));
        check(&raw)?;
    }
}
