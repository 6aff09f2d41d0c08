//! Name and label validation with Kubernetes' rules and messages (apimachinery's
//! `validation.IsDNS1123Label`, `IsDNS1123Subdomain`, `IsQualifiedName`, `IsValidLabelValue`,
//! and the port, config key, percent and IP checks that `objects` applies to fields).
//! Each check returns every problem it finds, worded as Kubernetes words it, so that a 422 from
//! Flotilla reads like one from Kubernetes.

const DNS1123_LABEL_MAX: usize = 63;
const DNS1123_SUBDOMAIN_MAX: usize = 253;
const QUALIFIED_NAME_MAX: usize = 63;
const LABEL_VALUE_MAX: usize = 63;

fn is_alnum_lower(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_alphanumeric()
}

/// A lowercase RFC 1123 label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters. Used for
/// namespace and service names.
pub fn dns1123_label(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        errors.push(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !matches_label(value) {
        errors.push(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or \
             '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or \
             '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
                .to_owned(),
        );
    }
    errors
}

fn matches_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            is_alnum_lower(first)
                && is_alnum_lower(last)
                && bytes.iter().all(|&c| is_alnum_lower(c) || c == b'-')
        }
        _ => false,
    }
}

/// A lowercase RFC 1123 subdomain: dot-separated labels, at most 253 characters. Used for most
/// object names.
pub fn dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errors.push(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if !value.split('.').all(matches_label) {
        errors.push(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, \
             '-' or '.', and must start and end with an alphanumeric character (e.g. \
             'example.com', regex used for validation is \
             '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .to_owned(),
        );
    }
    errors
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, possibly empty when `allow_empty`.
fn matches_name_part(value: &str, allow_empty: bool) -> bool {
    let bytes = value.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            is_alnum(first)
                && is_alnum(last)
                && bytes
                    .iter()
                    .all(|&c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => allow_empty,
    }
}

/// A qualified name such as a label or annotation key: an optional DNS subdomain prefix and `/`,
/// then a name of at most 63 characters.
pub fn qualified_name(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let (prefix, name) = match value.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, value),
    };
    if name.contains('/') {
        errors.push(
            "a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must \
             start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
             '123-abc', regex used for validation is \
             '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix \
             and '/' (e.g. 'example.com/MyName')"
                .to_owned(),
        );
        return errors;
    }
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            errors.push("prefix part must be non-empty".to_owned());
        } else {
            errors.extend(
                dns1123_subdomain(prefix)
                    .into_iter()
                    .map(|e| format!("prefix part {e}")),
            );
        }
    }
    if name.is_empty() {
        errors.push("name part must be non-empty".to_owned());
    } else {
        if name.len() > QUALIFIED_NAME_MAX {
            errors.push(format!(
                "name part must be no more than {QUALIFIED_NAME_MAX} characters"
            ));
        }
        if !matches_name_part(name, false) {
            errors.push(
                "name part must consist of alphanumeric characters, '-', '_' or '.', and must \
                 start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or \
                 '123-abc', regex used for validation is \
                 '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
                    .to_owned(),
            );
        }
    }
    errors
}

/// A label value: empty, or at most 63 characters of `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn label_value(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > LABEL_VALUE_MAX {
        errors.push(format!("must be no more than {LABEL_VALUE_MAX} characters"));
    }
    if !matches_name_part(value, true) {
        errors.push(
            "a valid label must be an empty string or consist of alphanumeric characters, '-', \
             '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  \
             or 'my_value',  or '12345', regex used for validation is \
             '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
                .to_owned(),
        );
    }
    errors
}

/// A lowercase RFC 1035 label: `[a-z]([-a-z0-9]*[a-z0-9])?`, at most 63 characters. Used for
/// service names, which must start with a letter.
pub fn dns1035_label(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_LABEL_MAX {
        errors.push(format!(
            "must be no more than {DNS1123_LABEL_MAX} characters"
        ));
    }
    if !(matches_label(value) && value.starts_with(|c: char| c.is_ascii_lowercase())) {
        errors.push(
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start \
             with an alphabetic character, and end with an alphanumeric character (e.g. \
             'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
                .to_owned(),
        );
    }
    errors
}

/// A wildcard DNS subdomain such as an ingress host `*.example.com`: `*.` followed by a DNS
/// subdomain.
pub fn wildcard_dns1123_subdomain(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errors.push(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    let well_formed = value
        .strip_prefix("*.")
        .is_some_and(|rest| rest.split('.').all(matches_label));
    if !well_formed {
        errors.push(
            "a wildcard DNS-1123 subdomain must start with '*.', followed by a valid DNS \
             subdomain, which must consist of lower case alphanumeric characters, '-' or '.' and \
             end with an alphanumeric character (e.g. '*.example.com', regex used for validation \
             is '\\*\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
                .to_owned(),
        );
    }
    errors
}

/// A port number: 1 to 65535.
pub fn port_number(value: i64) -> Vec<String> {
    if (1..=65535).contains(&value) {
        Vec::new()
    } else {
        vec!["must be between 1 and 65535, inclusive".to_owned()]
    }
}

/// A port name (IANA_SVC_NAME): at most 15 lowercase alphanumerics and single inner hyphens,
/// with at least one letter.
pub fn port_name(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 15 {
        errors.push("must be no more than 15 characters".to_owned());
    }
    if value.is_empty() || !value.bytes().all(|c| is_alnum_lower(c) || c == b'-') {
        errors.push(
            "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)".to_owned(),
        );
    }
    if !value.bytes().any(|c| c.is_ascii_lowercase()) {
        errors.push("must contain at least one letter (a-z)".to_owned());
    }
    if value.contains("--") {
        errors.push("must not contain consecutive hyphens (-)".to_owned());
    }
    if value.starts_with('-') || value.ends_with('-') {
        errors.push("must not begin or end with a hyphen (-)".to_owned());
    }
    errors
}

/// A key of a ConfigMap's or Secret's data: `[-._a-zA-Z0-9]+`, at most 253 characters, and
/// neither `.` nor `..` nor starting with `..`.
pub fn config_key(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > DNS1123_SUBDOMAIN_MAX {
        errors.push(format!(
            "must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
        ));
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|c| is_alnum(c) || matches!(c, b'-' | b'_' | b'.'))
    {
        errors.push(
            "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. \
             'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is \
             '[-._a-zA-Z0-9]+')"
                .to_owned(),
        );
    }
    match value {
        "." => errors.push("must not be '.'".to_owned()),
        ".." => errors.push("must not be '..'".to_owned()),
        _ if value.starts_with("..") => errors.push("must not start with '..'".to_owned()),
        _ => {}
    }
    errors
}

/// An environment variable name: printable ASCII other than `=` (Kubernetes' relaxed rule).
pub fn env_var_name(value: &str) -> Vec<String> {
    if value
        .bytes()
        .all(|c| (b' '..=b'~').contains(&c) && c != b'=')
    {
        Vec::new()
    } else {
        vec![
            "a valid environment variable name must consist only of printable ASCII characters \
             other than '='"
                .to_owned(),
        ]
    }
}

/// A percentage such as a rolling update's `maxSurge`: `[0-9]+%`.
pub fn percent(value: &str) -> Vec<String> {
    let digits = value.strip_suffix('%').unwrap_or_default();
    if !digits.is_empty() && digits.bytes().all(|c| c.is_ascii_digit()) {
        Vec::new()
    } else {
        vec![
            "a valid percent string must be a numeric string followed by an ending '%' (e.g. \
             '1%',  or '93%', regex used for validation is '[0-9]+%')"
                .to_owned(),
        ]
    }
}

/// An IPv4 or IPv6 address.
pub fn ip_address(value: &str) -> Vec<String> {
    if value.parse::<std::net::IpAddr>().is_ok() {
        Vec::new()
    } else {
        vec!["must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".to_owned()]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_labels() {
        for ok in ["a", "my-name", "123-abc", &"a".repeat(63)] {
            assert!(dns1123_label(ok).is_empty(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a.b", "a_b", &"a".repeat(64)] {
            assert!(!dns1123_label(bad).is_empty(), "{bad}");
        }
        assert_eq!(
            dns1123_label(&"a".repeat(64)),
            ["must be no more than 63 characters"]
        );
    }

    #[test]
    fn dns1123_subdomains() {
        for ok in ["example.com", "a", "my-pod-1", "a.b.c"] {
            assert!(dns1123_subdomain(ok).is_empty(), "{ok}");
        }
        for bad in ["", "a..b", ".a", "a.", "Pod", "a_b", &"a.".repeat(127)] {
            assert!(!dns1123_subdomain(bad).is_empty(), "{bad}");
        }
        assert!(dns1123_subdomain("My_Pod")[0].contains("lowercase RFC 1123 subdomain"));
    }

    #[test]
    fn qualified_names() {
        for ok in ["app", "app.kubernetes.io/name", "MyName", "my_name", "a/b"] {
            assert!(
                qualified_name(ok).is_empty(),
                "{ok}: {:?}",
                qualified_name(ok)
            );
        }
        assert_eq!(qualified_name("/a"), ["prefix part must be non-empty"]);
        assert_eq!(qualified_name("a/"), ["name part must be non-empty"]);
        assert!(qualified_name("a/b/c")[0].starts_with("a qualified name"));
        assert!(qualified_name("-a")[0].starts_with("name part must consist"));
        assert!(qualified_name("Bad_Prefix/a")[0].starts_with("prefix part a lowercase"));
        assert!(!qualified_name(&"a".repeat(64)).is_empty());
    }

    #[test]
    fn label_values() {
        for ok in ["", "v1", "my_value", "12345", "a.b-c"] {
            assert!(label_value(ok).is_empty(), "{ok}");
        }
        for bad in ["-a", "a-", "a b", "ü", &"a".repeat(64)] {
            assert!(!label_value(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn dns1035_labels() {
        assert!(dns1035_label("web-1").is_empty());
        assert!(dns1035_label("1web")[0].starts_with("a DNS-1035 label"));
    }

    #[test]
    fn wildcard_subdomains() {
        assert!(wildcard_dns1123_subdomain("*.example.com").is_empty());
        for bad in ["example.com", "*example.com", "*.*.example.com", "a.*.com"] {
            assert!(!wildcard_dns1123_subdomain(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert!(port_number(80).is_empty());
        assert_eq!(port_number(0), ["must be between 1 and 65535, inclusive"]);
        assert!(port_number(65536).len() == 1);
        for ok in ["http", "web-8080", "a1"] {
            assert!(port_name(ok).is_empty(), "{ok}");
        }
        assert_eq!(
            port_name("8080"),
            ["must contain at least one letter (a-z)"]
        );
        assert_eq!(
            port_name("a--b"),
            ["must not contain consecutive hyphens (-)"]
        );
        assert_eq!(
            port_name("-ab"),
            ["must not begin or end with a hyphen (-)"]
        );
        assert_eq!(port_name("a-very-long-port-name").len(), 1);
        assert!(port_name("HTTP").len() == 2);
    }

    #[test]
    fn config_keys() {
        for ok in ["key.name", "KEY_NAME", "key-name", ".hidden", "a..b"] {
            assert!(config_key(ok).is_empty(), "{ok}");
        }
        assert_eq!(config_key(".."), ["must not be '..'"]);
        assert_eq!(config_key("..a"), ["must not start with '..'"]);
        assert!(config_key("a/b")[0].starts_with("a valid config key"));
        assert!(!config_key("").is_empty());
    }

    #[test]
    fn env_names_percents_and_ips() {
        assert!(env_var_name("MY_VAR.1-x").is_empty());
        assert!(!env_var_name("A=B").is_empty());
        assert!(!env_var_name("tab\t").is_empty());
        assert!(percent("25%").is_empty());
        for bad in ["25", "%", "a%", "-1%"] {
            assert!(!percent(bad).is_empty(), "{bad}");
        }
        assert!(ip_address("10.0.0.1").is_empty());
        assert!(ip_address("2001:db8::1").is_empty());
        assert!(!ip_address("10.0.0.256").is_empty());
    }
}
