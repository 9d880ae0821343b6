//! Image references, parsed and normalized as Docker does.
//!
//! `nginx` means `docker.io/library/nginx:latest`; `localhost:5000/app@sha256:…` keeps its
//! registry port and digest. The grammar and normalization come from `oci-spec`'s
//! distribution `Reference` (a port of Docker's `distribution/reference`); this module adds
//! messages a user can act on.

use std::fmt;
use std::str::FromStr;

use oci_spec::distribution::{ParseError, Reference};

/// A parsed, normalized image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef(Reference);

impl ImageRef {
    /// The registry host (and port): `docker.io`, `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        self.0.registry()
    }

    /// The repository path inside the registry: `library/nginx`.
    pub fn repository(&self) -> &str {
        self.0.repository()
    }

    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.0.tag()
    }

    /// The digest, if the reference pins one.
    pub fn digest(&self) -> Option<&str> {
        self.0.digest()
    }

    /// The same image pinned to `digest` (the tag is dropped, as a digest wins).
    pub fn with_digest(&self, digest: &str) -> ImageRef {
        ImageRef(Reference::with_digest(
            self.registry().to_owned(),
            self.repository().to_owned(),
            digest.to_owned(),
        ))
    }

    /// The underlying `oci-spec` reference.
    pub fn as_reference(&self) -> &Reference {
        &self.0
    }
}

impl fmt::Display for ImageRef {
    /// The fully qualified form: `docker.io/library/nginx:latest`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Why a string is not an image reference.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{input}` is not a valid image reference: {reason}")]
pub struct ImageRefError {
    /// The reference as given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl FromStr for ImageRef {
    type Err = ImageRefError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |reason: &str| ImageRefError {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.trim() != input || input.is_empty() {
            return Err(err("it is empty or has surrounding spaces"));
        }
        if input.contains(['{', '}']) {
            return Err(err(
                "it contains `{` or `}`; replace the template placeholder with a real value",
            ));
        }
        match Reference::from_str(input) {
            Ok(r) => Ok(ImageRef(r)),
            Err(e) => {
                let name_part = input.split(['@']).next().unwrap_or(input);
                let repo_part = name_part.rsplit_once('/').map_or(name_part, |(_, r)| r);
                let repo_name = repo_part.split(':').next().unwrap_or(repo_part);
                let reason = match e {
                    ParseError::ReferenceInvalidFormat
                        if repo_name.chars().any(|c| c.is_ascii_uppercase()) =>
                    {
                        "repository names must be lowercase".to_owned()
                    }
                    ParseError::ReferenceInvalidFormat => {
                        "expected [registry[:port]/]repository[:tag][@digest] with a lowercase repository of letters, digits, '.', '_', '-' and '/'".to_owned()
                    }
                    other => other.to_string(),
                };
                Err(err(&reason))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// Short names normalize the way Docker normalizes them.
    #[test]
    fn normalizes_like_docker() {
        let cases = [
            ("nginx", "docker.io/library/nginx:latest"),
            ("nginx:1.25", "docker.io/library/nginx:1.25"),
            ("user/app", "docker.io/user/app:latest"),
            ("index.docker.io/user/app", "docker.io/user/app:latest"),
            (
                "ghcr.io/knative/autoscale-go:latest",
                "ghcr.io/knative/autoscale-go:latest",
            ),
            ("localhost/app", "localhost/app:latest"),
            ("127.0.0.1:5000/app:v1", "127.0.0.1:5000/app:v1"),
        ];
        for (input, want) in cases {
            let r: ImageRef = input.parse().unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), want);
        }
        let pinned: ImageRef = format!("localhost:5000/app@{DIGEST}")
            .parse()
            .expect("valid");
        assert_eq!(pinned.registry(), "localhost:5000");
        assert_eq!(pinned.digest(), Some(DIGEST));
        assert_eq!(pinned.tag(), None);
        let re = "nginx"
            .parse::<ImageRef>()
            .expect("valid")
            .with_digest(DIGEST);
        assert_eq!(re.to_string(), format!("docker.io/library/nginx@{DIGEST}"));
    }

    /// Invalid references are refused with a reason the user can act on.
    #[test]
    fn refuses_bad_references() {
        let e = "docker.io/{username}/helloworld-go"
            .parse::<ImageRef>()
            .expect_err("template placeholder");
        assert!(e.to_string().contains("placeholder"), "{e}");
        let e = "docker.io/User/App"
            .parse::<ImageRef>()
            .expect_err("uppercase");
        assert!(e.to_string().contains("lowercase"), "{e}");
        for bad in [
            "",
            " nginx",
            "nginx:",
            "app@sha256:abc",
            ":tag",
            "a//b",
            "app@md5:0011",
        ] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad:?}");
        }
    }
}
