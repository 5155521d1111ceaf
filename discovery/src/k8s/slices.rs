//! From EndpointSlices to endpoints: conditions, ports, address families, de-duplication.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::target::PortSpec;
use crate::{Endpoint, Metadata};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// An address family of EndpointSlices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum AddressFamily {
    /// `addressType: IPv4`.
    #[default]
    Ipv4,
    /// `addressType: IPv6`.
    Ipv6,
}

/// One EndpointSlice, reduced to what discovery needs.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Slice {
    pub family: Option<AddressFamily>,
    /// `None`: the slice says nothing about ports (all ports).
    pub ports: Option<Vec<(Option<String>, Option<i32>)>>,
    pub endpoints: Vec<SliceEndpoint>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SliceEndpoint {
    pub addresses: Vec<IpAddr>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub zone: Option<String>,
    /// Built once per slice version and shared by every snapshot that includes it.
    pub metadata: Metadata,
}

/// Converts a slice; problems that only concern some endpoints are returned as warnings.
pub(crate) fn convert(slice: EndpointSlice) -> (Slice, Vec<String>) {
    let mut warnings = Vec::new();
    let slice_name = slice.metadata.name.clone().unwrap_or_default();
    let family = match slice.address_type.as_str() {
        "IPv4" => Some(AddressFamily::Ipv4),
        "IPv6" => Some(AddressFamily::Ipv6),
        // FQDN slices (deprecated) name hosts, not addresses: not usable without DNS.
        other => {
            if !slice.endpoints.is_empty() {
                warnings.push(format!(
                    "addressType `{other}` is not supported (only IPv4 and IPv6); its {} endpoints are ignored",
                    slice.endpoints.len()
                ));
            }
            None
        }
    };
    let ports = slice
        .ports
        .map(|ps| ps.into_iter().map(|p| (p.name, p.port)).collect());
    let endpoints = slice
        .endpoints
        .into_iter()
        .map(|ep| {
            let conditions = ep.conditions.unwrap_or_default();
            // API: a nil `ready` means unknown and must be read as ready; a nil `serving`
            // follows `ready`.
            let ready = conditions.ready.unwrap_or(true);
            let addresses = ep
                .addresses
                .iter()
                .filter_map(|a| match a.parse::<IpAddr>() {
                    Ok(ip) => Some(ip),
                    Err(_) => {
                        warnings.push(format!("address `{a}` is not an IP address; skipped"));
                        None
                    }
                })
                .collect();
            let serving = conditions.serving.unwrap_or(ready);
            let terminating = conditions.terminating.unwrap_or(false);
            let mut md = Metadata::new();
            md.insert("slice", slice_name.as_str());
            md.insert("ready", ready.to_string());
            md.insert("serving", serving.to_string());
            md.insert("terminating", terminating.to_string());
            let pod = ep.target_ref.and_then(|r| r.name);
            let optional = [
                ("zone", &ep.zone),
                ("nodeName", &ep.node_name),
                ("hostname", &ep.hostname),
                ("pod", &pod),
            ];
            for (k, v) in optional {
                if let Some(v) = v {
                    md.insert(k, v.as_str());
                }
            }
            let for_zones: Vec<String> = ep
                .hints
                .and_then(|h| h.for_zones)
                .unwrap_or_default()
                .into_iter()
                .map(|z| z.name)
                .collect();
            if !for_zones.is_empty() {
                md.insert("hints.forZones", for_zones.join(","));
            }
            SliceEndpoint {
                addresses,
                ready,
                serving,
                terminating,
                zone: ep.zone,
                metadata: md,
            }
        })
        .collect();
    (
        Slice {
            family,
            ports,
            endpoints,
        },
        warnings,
    )
}

/// The endpoints of a service from all its slices (keyed by slice name), with warnings about
/// slices that had to be skipped; or, when no slice gives any endpoint, why.
///
/// Only one address family is used, so a dual-stack pod is not counted twice: `prefer` when
/// it has any usable endpoint, the other one otherwise. Ready endpoints are used; when none
/// is ready, serving endpoints that are terminating are used instead, as kube-proxy does.
pub(crate) fn endpoints(
    slices: &BTreeMap<String, Slice>,
    port: &PortSpec,
    prefer: AddressFamily,
    service: &str,
) -> Result<(Vec<Endpoint>, Vec<String>), String> {
    let other = match prefer {
        AddressFamily::Ipv4 => AddressFamily::Ipv6,
        AddressFamily::Ipv6 => AddressFamily::Ipv4,
    };
    let mut first_error = None;
    for family in [prefer, other] {
        for usable in [ready as fn(&SliceEndpoint) -> bool, draining] {
            match collect(slices, family, port, service, usable) {
                Ok((eps, warnings)) if !eps.is_empty() => return Ok((eps, warnings)),
                Ok((_, warnings)) => {
                    if first_error.is_none() {
                        first_error = warnings.into_iter().next();
                    }
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok((Vec::new(), Vec::new())),
    }
}

fn ready(e: &SliceEndpoint) -> bool {
    e.ready
}

/// Terminating endpoints that still serve: the fallback when none is ready.
fn draining(e: &SliceEndpoint) -> bool {
    e.serving && e.terminating
}

fn collect(
    slices: &BTreeMap<String, Slice>,
    family: AddressFamily,
    port: &PortSpec,
    service: &str,
    usable: fn(&SliceEndpoint) -> bool,
) -> Result<(Vec<Endpoint>, Vec<String>), String> {
    let usable = |e: &SliceEndpoint| usable(e) && !e.addresses.is_empty();
    let relevant: Vec<(&String, &Slice)> = slices
        .iter()
        .filter(|(_, s)| s.family == Some(family) && s.endpoints.iter().any(usable))
        .collect();
    let only = match port {
        PortSpec::Only => Some(only_port(&relevant, service)?),
        _ => None,
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    let mut warnings = Vec::new();
    for (name, slice) in relevant {
        let port = match (port, &only) {
            (PortSpec::Only, Some(Some(Some(port_name)))) => {
                match slice_port(slice, &PortSpec::Name(port_name.clone()), service) {
                    Ok(p) => Some(p),
                    Err(e) => {
                        warnings.push(format!("EndpointSlice `{name}`: {e}"));
                        None
                    }
                }
            }
            (PortSpec::Only, _) => slice
                .ports
                .iter()
                .flatten()
                .find_map(|(_, p)| p.and_then(|p| u16::try_from(p).ok())),
            // One slice without the port (a rollout that renamed it) must not take the
            // others down: skip it and say so.
            (spec, _) => match slice_port(slice, spec, service) {
                Ok(p) => Some(p),
                Err(e) => {
                    warnings.push(format!("EndpointSlice `{name}`: {e}"));
                    None
                }
            },
        };
        let Some(port) = port else { continue };
        for ep in slice.endpoints.iter().filter(|e| usable(e)) {
            for ip in &ep.addresses {
                let sa = SocketAddr::new(*ip, port);
                if !seen.insert(sa) {
                    continue; // the same endpoint in two slices (during a slice move)
                }
                out.push(to_endpoint(sa, ep));
            }
        }
    }
    out.sort_by(|a, b| a.addr.cmp(&b.addr));
    Ok((out, warnings))
}

/// The port of `slice` that `spec` names.
fn slice_port(slice: &Slice, spec: &PortSpec, service: &str) -> Result<u16, String> {
    let ports = slice.ports.as_deref().unwrap_or_default();
    match spec {
        PortSpec::Number(n) => {
            if ports.is_empty() || ports.iter().any(|(_, p)| *p == Some(i32::from(*n))) {
                Ok(*n)
            } else {
                Err(format!(
                    "port {n} is not a port of service `{service}`'s endpoints (they have {}); give the pod port or the port name",
                    describe(ports)
                ))
            }
        }
        PortSpec::Name(name) => ports
            .iter()
            .find(|(n, _)| n.as_deref() == Some(name.as_str()))
            .and_then(|(_, p)| p.and_then(|p| u16::try_from(p).ok()))
            .ok_or_else(|| {
                format!(
                    "service `{service}` has no port named `{name}` (its endpoints have {})",
                    describe(ports)
                )
            }),
        PortSpec::Only => Err("internal: no port".to_owned()),
    }
}

/// The name of the service's single port, when no port was given (`Some(None)`: one unnamed
/// port; `None`: the slices list no port). Slices may give that port different numbers (a
/// rollout that changed the container port): each slice's own number is used.
fn only_port(
    relevant: &[(&String, &Slice)],
    service: &str,
) -> Result<Option<Option<String>>, String> {
    let names: BTreeSet<Option<String>> = relevant
        .iter()
        .flat_map(|(_, s)| {
            s.ports
                .iter()
                .flatten()
                .map(|(n, _)| n.clone().filter(|n| !n.is_empty()))
        })
        .collect();
    match names.len() {
        0 if relevant.is_empty() => Ok(None),
        0 => Err(format!(
            "service `{service}`'s endpoints list no port; add `:PORT` to the target"
        )),
        1 => Ok(names.into_iter().next()),
        _ => {
            let all: BTreeSet<(Option<String>, Option<i32>)> = relevant
                .iter()
                .flat_map(|(_, s)| s.ports.iter().flatten().cloned())
                .collect();
            let list: Vec<_> = all.into_iter().collect();
            Err(format!(
                "service `{service}` has several ports ({}); add `:NAME` or `:PORT` to the target",
                describe(&list)
            ))
        }
    }
}

fn describe(ports: &[(Option<String>, Option<i32>)]) -> String {
    if ports.is_empty() {
        return "no ports".to_owned();
    }
    ports
        .iter()
        .map(|(n, p)| {
            let p = p.map_or("?".to_owned(), |p| p.to_string());
            match n.as_deref() {
                Some(n) if !n.is_empty() => format!("{n}={p}"),
                _ => p,
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn to_endpoint(sa: SocketAddr, ep: &SliceEndpoint) -> Endpoint {
    let mut e = Endpoint::new(sa);
    e.zone = ep.zone.clone();
    e.metadata = ep.metadata.clone();
    e
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn slice(v: serde_json::Value) -> Slice {
        convert(serde_json::from_value(v).unwrap()).0
    }

    fn ep(
        ip: &str,
        ready: Option<bool>,
        serving: Option<bool>,
        terminating: Option<bool>,
    ) -> serde_json::Value {
        json!({"addresses": [ip], "conditions": {"ready": ready, "serving": serving, "terminating": terminating}})
    }

    fn set(items: Vec<(&str, Slice)>) -> BTreeMap<String, Slice> {
        items.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn addrs(eps: &[Endpoint]) -> Vec<String> {
        eps.iter().map(|e| e.addr.to_string()).collect()
    }

    #[test]
    fn merges_dedups_and_honours_conditions() {
        let a = slice(json!({"addressType": "IPv4", "metadata": {"name": "a"},
            "ports": [{"name": "grpc", "port": 8080}],
            "endpoints": [ep("10.0.0.1", Some(true), None, None), ep("10.0.0.2", None, None, None),
                          ep("10.0.0.3", Some(false), Some(true), Some(true))]}));
        let b = slice(json!({"addressType": "IPv4", "metadata": {"name": "b"},
            "ports": [{"name": "grpc", "port": 8080}],
            "endpoints": [ep("10.0.0.2", Some(true), None, None), ep("10.0.0.4", Some(true), None, None)]}));
        let s = set(vec![("a", a), ("b", b)]);
        for spec in [
            PortSpec::Name("grpc".into()),
            PortSpec::Number(8080),
            PortSpec::Only,
        ] {
            let eps = endpoints(&s, &spec, AddressFamily::Ipv4, "svc").unwrap().0;
            assert_eq!(
                addrs(&eps),
                ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.4:8080"],
                "{spec:?}"
            );
        }
    }

    #[test]
    fn falls_back_to_serving_terminating_when_none_ready() {
        let a = slice(json!({"addressType": "IPv4", "ports": [{"port": 80}],
            "endpoints": [ep("10.0.0.1", Some(false), Some(true), Some(true)),
                          ep("10.0.0.2", Some(false), Some(false), Some(true))]}));
        let eps = endpoints(
            &set(vec![("a", a)]),
            &PortSpec::Only,
            AddressFamily::Ipv4,
            "svc",
        )
        .unwrap()
        .0;
        assert_eq!(addrs(&eps), ["10.0.0.1:80"]);
        assert_eq!(eps[0].metadata["terminating"], "true");
    }

    #[test]
    fn prefers_a_family_and_falls_back() {
        let v4 = slice(
            json!({"addressType": "IPv4", "ports": [{"port": 80}], "endpoints": [ep("10.0.0.1", None, None, None)]}),
        );
        let v6 = slice(
            json!({"addressType": "IPv6", "ports": [{"port": 80}], "endpoints": [ep("fd00::1", None, None, None)]}),
        );
        let both = set(vec![("4", v4.clone()), ("6", v6.clone())]);
        assert_eq!(
            addrs(
                &endpoints(&both, &PortSpec::Only, AddressFamily::Ipv4, "s")
                    .unwrap()
                    .0
            ),
            ["10.0.0.1:80"]
        );
        assert_eq!(
            addrs(
                &endpoints(&both, &PortSpec::Only, AddressFamily::Ipv6, "s")
                    .unwrap()
                    .0
            ),
            ["[fd00::1]:80"]
        );
        let only6 = set(vec![("6", v6)]);
        assert_eq!(
            addrs(
                &endpoints(&only6, &PortSpec::Only, AddressFamily::Ipv4, "s")
                    .unwrap()
                    .0
            ),
            ["[fd00::1]:80"]
        );
    }

    #[test]
    fn port_errors_list_the_ports() {
        let a = slice(json!({"addressType": "IPv4",
            "ports": [{"name": "grpc", "port": 8080}, {"name": "metrics", "port": 9090}],
            "endpoints": [ep("10.0.0.1", None, None, None)]}));
        let s = set(vec![("a", a)]);
        let e = endpoints(&s, &PortSpec::Only, AddressFamily::Ipv4, "svc").unwrap_err();
        assert!(e.contains("several ports (grpc=8080, metrics=9090)"), "{e}");
        let e = endpoints(
            &s,
            &PortSpec::Name("http".into()),
            AddressFamily::Ipv4,
            "svc",
        )
        .unwrap_err();
        assert!(e.contains("no port named `http`"), "{e}");
        let e = endpoints(&s, &PortSpec::Number(80), AddressFamily::Ipv4, "svc").unwrap_err();
        assert!(e.contains("port 80 is not a port"), "{e}");
        assert_eq!(
            addrs(
                &endpoints(
                    &s,
                    &PortSpec::Name("metrics".into()),
                    AddressFamily::Ipv4,
                    "svc"
                )
                .unwrap()
                .0
            ),
            ["10.0.0.1:9090"]
        );
    }

    #[test]
    fn one_port_name_with_numbers_that_differ_per_slice() {
        // A rollout that changed the container port: old pods on 8080, new pods on 9090.
        let old = slice(
            json!({"addressType": "IPv4", "ports": [{"name": "grpc", "port": 8080}],
            "endpoints": [ep("10.0.0.1", None, None, None)]}),
        );
        let new = slice(
            json!({"addressType": "IPv4", "ports": [{"name": "grpc", "port": 9090}],
            "endpoints": [ep("10.0.0.2", None, None, None)]}),
        );
        let s = set(vec![("old", old), ("new", new)]);
        for spec in [PortSpec::Only, PortSpec::Name("grpc".into())] {
            let (eps, warnings) = endpoints(&s, &spec, AddressFamily::Ipv4, "svc").unwrap();
            assert_eq!(addrs(&eps), ["10.0.0.1:8080", "10.0.0.2:9090"], "{spec:?}");
            assert!(warnings.is_empty());
        }
        // A number picks the slices that have it and says which were skipped.
        let (eps, warnings) =
            endpoints(&s, &PortSpec::Number(9090), AddressFamily::Ipv4, "svc").unwrap();
        assert_eq!(addrs(&eps), ["10.0.0.2:9090"]);
        assert!(warnings[0].contains("EndpointSlice `old`"), "{warnings:?}");
    }

    #[test]
    fn missing_and_null_fields_do_not_panic() {
        for v in [
            json!({"addressType": "IPv4"}),
            json!({"addressType": "IPv4", "endpoints": null, "ports": null}),
            json!({"addressType": "IPv4", "endpoints": [{"addresses": []}]}),
            json!({"addressType": "IPv4", "endpoints": [{"addresses": ["not-an-ip"], "conditions": null}]}),
            json!({"addressType": "FQDN", "endpoints": [{"addresses": ["a.example.com"]}]}),
            json!({"addressType": "IPv4", "ports": [{"name": "grpc"}], "endpoints": [{"addresses": ["10.0.0.1"]}]}),
        ] {
            let (s, _warnings) = convert(serde_json::from_value(v.clone()).unwrap());
            let _ = endpoints(
                &set(vec![("x", s)]),
                &PortSpec::Name("grpc".into()),
                AddressFamily::Ipv4,
                "svc",
            );
        }
        let (_, warnings) = convert(
            serde_json::from_value(json!({"addressType": "IPv4",
            "endpoints": [{"addresses": ["not-an-ip"]}]}))
            .unwrap(),
        );
        assert!(warnings[0].contains("`not-an-ip` is not an IP address"));
    }

    #[test]
    fn metadata_carries_topology() {
        let a = slice(
            json!({"addressType": "IPv4", "metadata": {"name": "a"}, "ports": [{"port": 80}], "endpoints": [{
            "addresses": ["10.0.0.1"], "zone": "eu-1a", "nodeName": "node-7", "hostname": "pod-0",
            "targetRef": {"kind": "Pod", "name": "greeter-abc"},
            "hints": {"forZones": [{"name": "eu-1a"}, {"name": "eu-1b"}]}}]}),
        );
        let eps = endpoints(
            &set(vec![("a", a)]),
            &PortSpec::Only,
            AddressFamily::Ipv4,
            "s",
        )
        .unwrap()
        .0;
        let md = &eps[0].metadata;
        assert_eq!(eps[0].zone.as_deref(), Some("eu-1a"));
        assert_eq!(
            (
                md["nodeName"].as_str(),
                md["hostname"].as_str(),
                md["pod"].as_str()
            ),
            ("node-7", "pod-0", "greeter-abc")
        );
        assert_eq!(md["hints.forZones"], "eu-1a,eu-1b");
        assert_eq!(md["slice"], "a");
    }
}
