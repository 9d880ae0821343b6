//! "Did you mean …?" suggestions for misspelled field names and annotation keys.

/// The candidate closest to `input`, when it is close enough to be a likely typo.
pub fn closest<'a>(input: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = input.to_ascii_lowercase();
    candidates
        .into_iter()
        .map(|c| {
            (
                c,
                strsim::damerau_levenshtein(&lower, &c.to_ascii_lowercase()),
            )
        })
        .filter(|(c, d)| *d <= 2.max(c.len() / 5))
        .min_by_key(|(_, d)| *d)
        .map(|(c, _)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Near misses are suggested; unrelated names are not.
    #[test]
    fn suggests_near_misses() {
        let fields = ["containerPort", "name", "protocol"];
        assert_eq!(closest("protocl", fields), Some("protocol"));
        assert_eq!(closest("containerport", fields), Some("containerPort"));
        assert_eq!(closest("hostNetwork", fields), None);
    }
}
