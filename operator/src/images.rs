//! The image allow-list (`--allowed-images`).
//!
//! Whoever may create an `InventorySystem` chooses the images that receive
//! the credentials the operator generates for it (the JWT signing key, the
//! database and broker passwords). A platform team that lets application
//! teams create systems can pin those images to registries it trusts: an
//! image outside the list makes the spec invalid (`Degraded=True`,
//! reason `InvalidSpec`) and nothing is applied. No list: every image is
//! allowed, as before.
//!
//! Entries and images are compared in Docker's normalised form
//! (`postgres:16` is `docker.io/library/postgres:16`). An entry ending in
//! `/` allows every image under that path (`ghcr.io/stockmesh/`); an entry
//! with a tag or digest allows exactly that image (`postgres:16.4`); any
//! other entry allows every tag of that repository (`postgres`).

use crate::crd::InventorySystemSpec;

/// The registries and repositories images may come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ImagePolicy {
    /// Normalised entries; empty: everything allowed.
    allowed: Vec<String>,
}

impl ImagePolicy {
    /// A policy from the entries given on the command line; an empty entry
    /// is refused (it would read as "allow everything" by accident).
    pub fn new<I, S>(entries: I) -> Result<Self, String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut allowed = Vec::new();
        for entry in entries {
            let entry = entry.as_ref().trim();
            if entry.is_empty() || entry.chars().any(char::is_whitespace) {
                return Err(format!("allowed image {entry:?} is empty or has spaces"));
            }
            let normalised = normalise(entry);
            // `ghcr.io/stockmesh/` normalises to itself; keep the slash.
            allowed.push(normalised);
        }
        Ok(Self { allowed })
    }

    /// Whether every image is allowed (no list was given).
    pub fn allows_all(&self) -> bool {
        self.allowed.is_empty()
    }

    /// Whether `image` may run.
    pub fn allows(&self, image: &str) -> bool {
        if self.allowed.is_empty() {
            return true;
        }
        let image = normalise(image);
        let repository = repository_of(&image);
        self.allowed.iter().any(|entry| {
            if entry.ends_with('/') {
                image.starts_with(entry.as_str())
            } else if repository_of(entry) != entry {
                image == *entry
            } else {
                repository == entry
            }
        })
    }

    /// One sentence per image of `spec` the list does not allow.
    pub fn problems(&self, spec: &InventorySystemSpec) -> Vec<String> {
        if self.allows_all() {
            return Vec::new();
        }
        chosen_images(spec)
            .into_iter()
            .filter(|(_, image)| !self.allows(image))
            .map(|(field, image)| {
                format!(
                    "{field}: image {image:?} is not in the operator's allowed images ({})",
                    self.allowed.join(", ")
                )
            })
            .collect()
    }
}

/// Every image the spec makes the operator run, with the field it comes from.
pub fn chosen_images(spec: &InventorySystemSpec) -> Vec<(&'static str, String)> {
    let mut images: Vec<(&'static str, String)> = crate::resources::deployables(spec)
        .iter()
        .map(|svc| {
            (
                "image.repository",
                format!(
                    "{}/{}:{}",
                    spec.image.repository,
                    svc.as_str(),
                    spec.image.tag
                ),
            )
        })
        .collect();
    if let Some(pg) = &spec.postgres.managed {
        images.push(("postgres.managed.image", pg.image.clone()));
    }
    if let Some(mq) = &spec.rabbitmq.managed {
        images.push(("rabbitmq.managed.image", mq.image.clone()));
    }
    images
}

/// Docker's normalisation of an image reference: a bare name is an
/// official image on Docker Hub, a first component without a dot, colon
/// or `localhost` is a Docker Hub namespace.
pub fn normalise(reference: &str) -> String {
    match reference.split_once('/') {
        None => format!("docker.io/library/{reference}"),
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            reference.to_owned()
        }
        Some(_) => format!("docker.io/{reference}"),
    }
}

/// The repository of a normalised reference: without its tag or digest.
fn repository_of(reference: &str) -> &str {
    let without_digest = reference.split('@').next().unwrap_or(reference);
    let last_slash = without_digest.rfind('/').map_or(0, |i| i + 1);
    match without_digest[last_slash..].find(':') {
        Some(colon) => &without_digest[..last_slash + colon],
        None => without_digest,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(entries: &[&str]) -> ImagePolicy {
        ImagePolicy::new(entries.iter().copied()).expect("valid entries")
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(normalise("postgres:16"), "docker.io/library/postgres:16");
        assert_eq!(normalise("bitnami/redis"), "docker.io/bitnami/redis");
        assert_eq!(normalise("ghcr.io/a/b:1"), "ghcr.io/a/b:1");
        assert_eq!(normalise("localhost/a"), "localhost/a");
        assert_eq!(normalise("registry:5000/a"), "registry:5000/a");
    }

    #[test]
    fn a_path_entry_allows_what_is_under_it_and_nothing_beside_it() {
        let p = policy(&["ghcr.io/stockmesh/"]);
        assert!(p.allows("ghcr.io/stockmesh/order:1.2.3"));
        assert!(!p.allows("ghcr.io/stockmesh-evil/order:1"));
        assert!(!p.allows("ghcr.io/other/order:1"));
        assert!(!p.allows("order:1"));
    }

    #[test]
    fn a_repository_entry_allows_its_tags_and_a_tagged_entry_only_itself() {
        let p = policy(&["postgres", "rabbitmq:3.13-management"]);
        assert!(p.allows("postgres:16"));
        assert!(p.allows("docker.io/library/postgres:16"));
        assert!(p.allows("postgres@sha256:abc"));
        assert!(!p.allows("postgresx:16"));
        assert!(!p.allows("evil/postgres:16"));
        assert!(p.allows("rabbitmq:3.13-management"));
        assert!(!p.allows("rabbitmq:3.12"));
    }

    #[test]
    fn no_list_allows_everything_and_empty_entries_are_refused() {
        assert!(ImagePolicy::default().allows("anything/at:all"));
        assert!(ImagePolicy::new([""]).is_err());
        assert!(ImagePolicy::new(["a b"]).is_err());
    }

    #[test]
    fn every_chosen_image_is_checked() {
        let spec: InventorySystemSpec = serde_json::from_value(serde_json::json!({
            "image": {"repository": "ghcr.io/stockmesh", "tag": "1.0.0"},
            "postgres": {"managed": {"image": "evil.example/postgres:16"}},
            "rabbitmq": {"managed": {}},
        }))
        .expect("spec");
        let p = policy(&["ghcr.io/stockmesh/", "rabbitmq"]);
        let problems = p.problems(&spec);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].starts_with("postgres.managed.image"));
        assert!(problems[0].contains("evil.example/postgres:16"));
        // Five services, the web console, PostgreSQL, RabbitMQ.
        let images = chosen_images(&spec);
        assert_eq!(images.len(), 8);
        assert!(images.contains(&("image.repository", "ghcr.io/stockmesh/web:1.0.0".into())));
        // Without the console its image is not run, so not checked.
        let mut spec = spec;
        spec.services.web.enabled = false;
        assert_eq!(chosen_images(&spec).len(), 7);
        assert!(
            chosen_images(&spec)
                .iter()
                .all(|(_, i)| !i.contains("/web:"))
        );
    }
}
