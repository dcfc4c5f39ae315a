//! The deployment files are checked like code: every Kubernetes object is read with the API's
//! own types (k8s-openapi), and a field those types do not know — a typo, a wrong indent — is a
//! failure, not a silently ignored line. The objects must also agree with each other and with
//! Shoal's config, which is loaded and validated by Shoal itself.

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn k8s_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/k8s")
}

/// Deserializes `v` as `T`, failing on any field `T` does not have.
fn strict<T: DeserializeOwned>(v: serde_yaml::Value, what: &str) -> T {
    let mut unknown = Vec::new();
    let t = serde_ignored::deserialize(v, |path| unknown.push(path.to_string()))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(unknown.is_empty(), "{what}: unknown fields {unknown:?}");
    t
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[allow(dead_code)]
struct Kustomization {
    api_version: String,
    kind: String,
    namespace: String,
    resources: Vec<String>,
    images: Vec<serde_yaml::Value>,
}

#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    config_maps: Vec<ConfigMap>,
    secrets: Vec<Secret>,
    services: Vec<Service>,
    stateful_sets: Vec<StatefulSet>,
    pdbs: Vec<PodDisruptionBudget>,
}

fn load() -> (Kustomization, Objects) {
    let dir = k8s_dir();
    let k: Kustomization =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .expect("kustomization.yaml");
    assert_eq!(k.kind, "Kustomization");
    let mut o = Objects::default();
    for file in &k.resources {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{file} is listed but cannot be read: {e}"));
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v = serde_yaml::Value::deserialize(doc).unwrap();
            let kind = v["kind"].as_str().unwrap_or_default().to_owned();
            let what = format!("{file} ({kind})");
            match kind.as_str() {
                "Namespace" => o.namespaces.push(strict(v, &what)),
                "ConfigMap" => o.config_maps.push(strict(v, &what)),
                "Secret" => o.secrets.push(strict(v, &what)),
                "Service" => o.services.push(strict(v, &what)),
                "StatefulSet" => o.stateful_sets.push(strict(v, &what)),
                "PodDisruptionBudget" => o.pdbs.push(strict(v, &what)),
                other => panic!("{file}: unexpected kind {other:?}"),
            }
        }
    }
    (k, o)
}

use serde::Deserialize;

#[test]
#[allow(clippy::result_large_err)] // figment's Jail API fixes the error type
fn manifests_are_valid_kubernetes_objects_that_agree_with_each_other() {
    let (k, o) = load();
    assert_eq!(
        o.namespaces[0].metadata.name.as_deref(),
        Some(k.namespace.as_str())
    );
    let sts = &o.stateful_sets[0];
    let spec = &sts.spec;
    assert_eq!(spec.replicas, Some(3));
    let pod_labels: BTreeMap<String, String> = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap();
    let selects =
        |sel: &BTreeMap<String, String>| sel.iter().all(|(k, v)| pod_labels.get(k) == Some(v));
    assert!(selects(spec.selector.match_labels.as_ref().unwrap()));

    // The peer Service: headless, publishes not-ready pods, is the StatefulSet's service.
    let peers = o
        .services
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(spec.service_name.as_deref().unwrap()))
        .expect("the StatefulSet's serviceName is a Service");
    let ps = peers.spec.as_ref().unwrap();
    assert_eq!(
        ps.cluster_ip.as_deref(),
        Some("None"),
        "peer Service is headless"
    );
    assert_eq!(ps.publish_not_ready_addresses, Some(true));
    assert!(selects(ps.selector.as_ref().unwrap()));
    // The client Service selects the pods too.
    for s in &o.services {
        assert!(selects(s.spec.as_ref().unwrap().selector.as_ref().unwrap()));
    }
    let pdb = o.pdbs[0].spec.as_ref().unwrap();
    assert!(selects(
        pdb.selector
            .as_ref()
            .unwrap()
            .match_labels
            .as_ref()
            .unwrap()
    ));

    let pod = spec.template.spec.as_ref().unwrap();
    let anti = pod
        .affinity
        .as_ref()
        .and_then(|a| a.pod_anti_affinity.as_ref());
    assert!(anti.is_some(), "pod anti-affinity");
    let c = &pod.containers[0];
    let pod_ip = c
        .env
        .as_ref()
        .unwrap()
        .iter()
        .find(|e| e.name == "POD_IP")
        .expect("POD_IP env");
    let field = pod_ip
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(field, Some("status.podIP"), "POD_IP from the downward API");
    let secret_name = c.env_from.as_ref().unwrap()[0]
        .secret_ref
        .as_ref()
        .unwrap()
        .name
        .clone();
    let secret = o
        .secrets
        .iter()
        .find(|s| s.metadata.name.as_deref() == Some(secret_name.as_str()))
        .expect("envFrom names the Secret");
    let port = |name: &str| {
        c.ports
            .as_ref()
            .unwrap()
            .iter()
            .find(|p| p.name.as_deref() == Some(name))
            .map(|p| p.container_port)
            .unwrap_or_else(|| panic!("container port {name}"))
    };
    // Annotation-based scraping reads the ops port's /metrics.
    let ann = sts
        .spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.clone())
        .unwrap_or_default();
    assert_eq!(
        ann.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );
    assert_eq!(
        ann.get("prometheus.io/port").map(String::as_str),
        Some(port("ops").to_string().as_str())
    );
    for (probe, path) in [
        (c.liveness_probe.as_ref(), "/healthz"),
        (c.readiness_probe.as_ref(), "/readyz"),
    ] {
        let get = probe.and_then(|p| p.http_get.as_ref()).expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String("ops".into())
        );
    }

    // The config in the ConfigMap is one Shoal accepts, with the Secret's variables and the
    // pod's IP as the container sees them, and its ports are the container's.
    let cm = o
        .config_maps
        .iter()
        .find(|m| m.metadata.name.as_deref() == Some("shoal-config"))
        .unwrap();
    let toml = cm.data.as_ref().unwrap()["shoal.toml"].clone();
    let env: BTreeMap<String, String> = secret.string_data.clone().unwrap();
    figment::Jail::expect_with(|jail| {
        jail.set_env("POD_IP", "10.1.2.3");
        for (k, v) in &env {
            jail.set_env(k, v);
        }
        let fig = figment::Figment::from(figment::providers::Serialized::defaults(
            shoal::config::Config::default(),
        ))
        .merge(<figment::providers::Toml as figment::providers::Format>::string(&toml))
        .merge(figment::providers::Env::prefixed("SHOAL_").split("__"));
        let cfg = shoal::config::Config::from_figment(fig).map_err(|e| e.to_string())?;
        assert!(cfg.cluster.enabled());
        // The shipped manifests never run an open relay for the operator's buckets.
        assert_eq!(cfg.auth.mode, shoal::config::AuthMode::Sigv4);
        assert!(!cfg.auth.users.is_empty(), "users come from the Secret");

        assert_eq!(cfg.cluster.dns.as_deref(), peers.metadata.name.as_deref());
        assert_eq!(i32::from(cfg.server.listen.port()), port("s3"));
        assert_eq!(i32::from(cfg.cluster.listen.port()), port("internal"));
        assert_eq!(i32::from(cfg.ops.listen.port()), port("ops"));
        Ok(())
    });
}

#[test]
fn a_typo_in_a_manifest_is_caught() {
    // The check above would be worthless if unknown fields slipped through: prove they don't.
    let text = std::fs::read_to_string(k8s_dir().join("service-peers.yaml")).unwrap();
    let typo = text.replace("publishNotReadyAddresses", "publishNotReadyAdresses");
    let v: serde_yaml::Value = serde_yaml::from_str(&typo).unwrap();
    let r = std::panic::catch_unwind(|| strict::<Service>(v, "typo"));
    assert!(r.is_err(), "a misspelt field was accepted");
}

#[test]
fn the_image_builds_the_binary_and_exposes_the_ports() {
    let d =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/Dockerfile"))
            .unwrap();
    assert!(d.contains("cargo build --release --locked --bin shoal"));
    assert!(d.contains("EXPOSE 9000 9001 9002"));
    assert!(
        d.contains("USER 10001"),
        "runs as the non-root user the StatefulSet expects"
    );
}

#[test]
fn the_dashboard_queries_only_metrics_and_labels_shoal_exports() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("deploy/grafana/shoal-dashboard.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    // What Shoal exports, from its own exposition: every family's sample names (a labelled
    // family shows once it has a series).
    use shoal::telemetry::metrics::*;
    let m = Metrics::new();
    m.request(Op::Get, 200, std::time::Duration::ZERO, 0);
    m.chunk(Source::Hit);
    m.origin(OriginOutcome::Ok);
    m.peer(PeerOutcome::Served);
    m.metadata(MetaResult::Hit);
    let exposition = m.render(Default::default());
    let mut exported = std::collections::BTreeSet::new();
    for l in exposition.lines() {
        let mut w = l.split_whitespace();
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (w.next(), w.next(), w.next(), w.next())
        {
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[""],
            };
            for s in suffixes {
                exported.insert(format!("{name}{s}"));
            }
        }
    }
    assert!(exported.contains("shoal_requests_total"), "{exported:?}");
    let labels = ["op", "status", "result", "outcome", "le", "instance"];
    let mut queries = 0;
    for panel in dash["panels"].as_array().unwrap() {
        for t in panel["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            queries += 1;
            let mut rest = expr;
            while let Some(i) = rest.find("shoal_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                assert!(
                    exported.contains(&name),
                    "{name} is not exported (in {expr})"
                );
                rest = &rest[i + name.len()..];
            }
            for by in expr.split("by (").skip(1) {
                for l in by.split(')').next().unwrap().split(',') {
                    assert!(labels.contains(&l.trim()), "unknown label {l} in {expr}");
                }
            }
            let legend = t["legendFormat"].as_str().unwrap_or("");
            for l in legend.split("{{").skip(1) {
                let l = l.split("}}").next().unwrap();
                assert!(
                    labels.contains(&l),
                    "unknown label {l} in the legend {legend}"
                );
            }
        }
        let w = panel["gridPos"]["w"].as_u64().unwrap() + panel["gridPos"]["x"].as_u64().unwrap();
        assert!(w <= 24, "a panel is wider than the dashboard");
    }
    assert!(
        queries >= 15,
        "the dashboard has its panels ({queries} queries)"
    );
}
