//! Name, label, annotation and duration syntax shared by every object, following Kubernetes'
//! validation rules (`k8s.io/apimachinery/pkg/util/validation`) and Go's `time.ParseDuration`.

use std::time::Duration;

/// Longest DNS label (RFC 1123).
pub const DNS_LABEL_MAX: usize = 63;
/// Longest DNS subdomain (RFC 1123).
pub const DNS_SUBDOMAIN_MAX: usize = 253;

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// Checks an RFC 1123 DNS label: lowercase letters, digits and `-`, starting and ending with a
/// letter or digit, at most 63 characters. Namespaces and tags use it.
pub fn check_dns1123_label(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > DNS_LABEL_MAX {
        return Err(format!(
            "must be at most {DNS_LABEL_MAX} characters (has {})",
            value.len()
        ));
    }
    let ok_chars = value.chars().all(|c| is_lower_alnum(c) || c == '-');
    let ok_ends = value.starts_with(is_lower_alnum) && value.ends_with(is_lower_alnum);
    if !ok_chars || !ok_ends {
        return Err(format!(
            "`{value}` must consist of lowercase letters, digits and '-', and start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks an RFC 1035 DNS label (as [`check_dns1123_label`], but starting with a letter).
/// Service and revision names use it, because they become host names.
pub fn check_dns1035_label(value: &str) -> Result<(), String> {
    check_dns1123_label(value)?;
    if !value.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err(format!("`{value}` must start with a lowercase letter"));
    }
    Ok(())
}

/// Checks an RFC 1123 DNS subdomain: dot-separated labels, at most 253 characters.
pub fn check_dns1123_subdomain(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("must not be empty".into());
    }
    if value.len() > DNS_SUBDOMAIN_MAX {
        return Err(format!("must be at most {DNS_SUBDOMAIN_MAX} characters"));
    }
    let ok_chars = value
        .chars()
        .all(|c| is_lower_alnum(c) || c == '-' || c == '.');
    let ok_ends = value.starts_with(is_lower_alnum) && value.ends_with(is_lower_alnum);
    if !ok_chars || !ok_ends || value.contains("..") {
        return Err(format!(
            "`{value}` must be a DNS subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

fn check_name_part(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 63 {
        return Err(format!("name part `{name}` must be 1 to 63 characters"));
    }
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ok_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok_chars || !ok_ends {
        return Err(format!(
            "name part `{name}` must consist of letters, digits, '-', '_' or '.', and start and end with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a qualified name (`[prefix/]name`), the syntax of label and annotation keys.
pub fn check_qualified_name(key: &str) -> Result<(), String> {
    match key.split_once('/') {
        Some((prefix, name)) => {
            check_dns1123_subdomain(prefix).map_err(|e| format!("key prefix: {e}"))?;
            check_name_part(name)
        }
        None => check_name_part(key),
    }
}

/// Checks a label value: empty, or at most 63 letters, digits, `-`, `_`, `.`, starting and
/// ending with a letter or digit.
pub fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name_part(value).map_err(|_| {
        format!(
            "label value `{value}` must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
        )
    })
}

/// Checks an environment variable name: printable ASCII without `=` (Kubernetes 1.30 rules).
pub fn check_env_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if !name.chars().all(|c| c.is_ascii_graphic() && c != '=') {
        return Err(format!(
            "`{name}` must consist of printable ASCII characters other than '=' and space"
        ));
    }
    Ok(())
}

/// Parses a Go duration (`time.ParseDuration`): `300ms`, `1.5h`, `2h45m`, `0`. Negative
/// durations are refused because no skiff setting takes one.
pub fn parse_go_duration(input: &str) -> Result<Duration, String> {
    let bad = || format!("`{input}` is not a duration (examples: 30s, 1m30s, 1h, 500ms)");
    let s = input.strip_prefix('+').unwrap_or(input);
    if s.starts_with('-') {
        return Err(format!("`{input}` is negative"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut rest = s;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, after) = rest.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 || num.len() > 30 {
            return Err(bad());
        }
        let unit_end = after
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(after.len());
        let (unit, next) = after.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| bad())?
        };
        let mut nanos = int.checked_mul(unit_nanos).ok_or_else(bad)?;
        if !frac_part.is_empty() {
            let frac: u128 = frac_part.parse().map_err(|_| bad())?;
            let denom = 10u128.checked_pow(frac_part.len() as u32).ok_or_else(bad)?;
            nanos = nanos
                .checked_add(frac.checked_mul(unit_nanos).ok_or_else(bad)? / denom)
                .ok_or_else(bad)?;
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(bad)?;
        rest = next;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| bad())?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration the way Go does for whole units (`1h0m0s` → `1h`, `90s` → `1m30s`).
pub fn format_duration(d: Duration) -> String {
    let total = d.as_secs();
    let millis = d.subsec_millis();
    if total == 0 && millis == 0 {
        return "0s".into();
    }
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || millis > 0 || out.is_empty() {
        if millis > 0 {
            out.push_str(&format!("{s}.{millis:03}s"));
        } else {
            out.push_str(&format!("{s}s"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DNS names follow RFC 1123 / 1035 as Kubernetes applies them.
    #[test]
    fn dns_labels() {
        assert!(check_dns1123_label("hello-world").is_ok());
        assert!(check_dns1123_label("1abc").is_ok());
        assert!(check_dns1035_label("1abc").is_err());
        assert!(check_dns1123_label("Hello").is_err());
        assert!(check_dns1123_label("-a").is_err());
        assert!(check_dns1123_label("a-").is_err());
        assert!(check_dns1123_label(&"a".repeat(64)).is_err());
        assert!(check_dns1123_label(&"a".repeat(63)).is_ok());
        assert!(check_dns1123_subdomain("serving.knative.dev").is_ok());
        assert!(check_dns1123_subdomain("a..b").is_err());
    }

    /// Label and annotation keys are qualified names; values have their own rule.
    #[test]
    fn qualified_names_and_values() {
        assert!(check_qualified_name("app").is_ok());
        assert!(check_qualified_name("autoscaling.knative.dev/min-scale").is_ok());
        assert!(check_qualified_name("autoscaling.knative.dev/minScale").is_ok());
        assert!(check_qualified_name("/x").is_err());
        assert!(check_qualified_name("a/b/c").is_err());
        assert!(check_qualified_name("bad key").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_3").is_ok());
        assert!(check_label_value("not ok").is_err());
    }

    /// Go durations parse as Go parses them; negative and malformed ones are refused.
    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_go_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_go_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "10", "1x", "s", "-1s", "1..2s", "1m30"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_secs(3600)), "1h");
        assert_eq!(format_duration(Duration::ZERO), "0s");
    }
}
