//! The answer of `/v1/health/service/<name>` and how an entry becomes an [`Endpoint`].
//!
//! Each entry is read on its own: one entry Consul holds in a shape we cannot use (no
//! port, an address that is not an IP) is skipped and reported, and the rest serve.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::HealthFilter;
pub(crate) use crate::lookup::Found;
use crate::lookup::{Place, host_place, url_place};
use crate::{DEFAULT_WEIGHT, Endpoint, META_PREFIX, META_VERSION};

/// Metadata key: the Consul service instance id.
pub const META_CONSUL_ID: &str = "consul.id";
/// Metadata key: the Consul node the instance is registered on.
pub const META_CONSUL_NODE: &str = "consul.node";
/// Metadata key: the datacenter of that node.
pub const META_CONSUL_DC: &str = "consul.dc";
/// Metadata key: the instance's tags, comma separated.
pub const META_CONSUL_TAGS: &str = "consul.tags";
/// Metadata key: the aggregated check status (`passing`, `warning`, `critical`).
pub const META_CONSUL_HEALTH: &str = "consul.health";

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
pub(crate) struct Entry {
    node: Node,
    service: Option<Service>,
    checks: Option<Vec<Check>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Node {
    node: Option<String>,
    address: Option<String>,
    datacenter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Service {
    #[serde(rename = "ID")]
    id: Option<String>,
    service: Option<String>,
    tags: Option<Vec<String>>,
    address: Option<String>,
    port: Option<u32>,
    meta: Option<BTreeMap<String, String>>,
    weights: Option<Weights>,
    tagged_addresses: Option<BTreeMap<String, TaggedAddress>>,
    locality: Option<Locality>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Weights {
    passing: Option<u32>,
    warning: Option<u32>,
}

/// A `TaggedAddresses` value. Consul writes `Address`/`Port`; its register API documents
/// them lower-case, and both reach the catalog, so both are read.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct TaggedAddress {
    #[serde(rename = "Address", alias = "address")]
    address: Option<String>,
    #[serde(rename = "Port", alias = "port")]
    port: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Locality {
    zone: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Check {
    status: Option<String>,
}

/// Parses a whole answer: the entries that can be used, and a message for each one that
/// cannot. `Err` when the answer is not a JSON list at all.
pub(crate) fn parse(
    body: &[u8],
    service: &str,
    health: HealthFilter,
) -> Result<(Vec<Found>, Vec<String>), String> {
    let raw: Vec<serde_json::Value> = serde_json::from_slice(body).map_err(|e| {
        format!("the health answer for `{service}` is not a JSON list of entries: {e}")
    })?;
    let mut found = Vec::with_capacity(raw.len());
    let mut bad = Vec::new();
    for (i, value) in raw.into_iter().enumerate() {
        let entry: Entry = match serde_json::from_value(value) {
            Ok(e) => e,
            Err(e) => {
                bad.push(format!("entry #{} of `{service}` is malformed: {e}", i + 1));
                continue;
            }
        };
        match entry.into_found(health) {
            Ok(Some(f)) => found.push(f),
            Ok(None) => {}
            Err(why) => bad.push(format!("entry #{} of `{service}`: {why}", i + 1)),
        }
    }
    Ok((found, bad))
}

impl Entry {
    /// The endpoint of this entry; `None` when the health filter leaves it out.
    fn into_found(self, health: HealthFilter) -> Result<Option<Found>, String> {
        let Some(svc) = self.service else {
            return Err("it has no `Service`".into());
        };
        let id = svc.id.clone().unwrap_or_default();
        let name = |what: &str| {
            if id.is_empty() {
                what.to_owned()
            } else {
                format!("instance `{id}` {what}")
            }
        };
        // The worst check decides, as Consul's own aggregation does.
        let statuses = self.checks.unwrap_or_default();
        let status = statuses
            .iter()
            .map(|c| match c.status.as_deref() {
                Some("passing") => 0,
                Some("warning") => 1,
                // critical, maintenance, and anything unknown.
                _ => 2,
            })
            .max()
            .unwrap_or(0);
        let keep = match health {
            HealthFilter::Passing => status == 0,
            HealthFilter::Warning => status <= 1,
            HealthFilter::Any => true,
        };
        if !keep {
            return Ok(None);
        }
        let place = place(&svc, self.node.address.as_deref()).map_err(|w| name(&w))?;
        let weights = svc.weights.as_ref();
        let mut weight = if status == 1 {
            weights.and_then(|w| w.warning)
        } else {
            weights.and_then(|w| w.passing)
        }
        .unwrap_or(DEFAULT_WEIGHT);
        let meta = svc.meta.unwrap_or_default();
        // kratos keeps the weight in the metadata, and its selector reads it from there.
        if let Some(w) = meta.get("weight") {
            weight = w
                .trim()
                .parse()
                .map_err(|_| name(&format!("has `Meta.weight` `{w}`, not a whole number")))?;
        }
        let mut ep = Endpoint::new(place.placeholder()).with_weight(weight);
        if let Some(zone) = svc.locality.and_then(|l| l.zone).filter(|z| !z.is_empty()) {
            ep = ep.with_zone(zone);
        }
        let tags = svc.tags.unwrap_or_default();
        if let Some(v) = tags.iter().find_map(|t| t.strip_prefix("version=")) {
            ep = ep.with_metadata(META_VERSION, v);
        }
        if !tags.is_empty() {
            ep = ep.with_metadata(META_CONSUL_TAGS, tags.join(","));
        }
        if !id.is_empty() {
            ep = ep.with_metadata(META_CONSUL_ID, id.clone());
        }
        if let Some(n) = self.node.node.filter(|n| !n.is_empty()) {
            ep = ep.with_metadata(META_CONSUL_NODE, n);
        }
        if let Some(dc) = self.node.datacenter.filter(|d| !d.is_empty()) {
            ep = ep.with_metadata(META_CONSUL_DC, dc);
        }
        let label = ["passing", "warning", "critical"][status];
        ep = ep.with_metadata(META_CONSUL_HEALTH, label);
        for (k, v) in meta {
            ep = ep.with_metadata(format!("{META_PREFIX}{k}"), v);
        }
        let _ = svc.service;
        Ok(Some(Found::new(place, ep)))
    }
}

/// The address clients dial. kratos clients read only `TaggedAddresses` (the `grpc`
/// entry, `grpcs` with TLS: kratos `contrib/registry/consul/client.go`, `defaultResolver`),
/// and a kratos server with HTTP and gRPC endpoints puts the first one, often the HTTP
/// one, in `Service.Address`/`Port`; so a `grpc`/`grpcs` tagged address wins. Otherwise
/// `Service.Address`, or the node's address when it is empty, and `Service.Port`, as
/// go-zero reads them (zero-contrib `zrpc/registry/consul/resolver.go`).
fn place(svc: &Service, node_address: Option<&str>) -> Result<Place, String> {
    let tagged = svc.tagged_addresses.as_ref().and_then(|t| {
        ["grpc", "grpcs"]
            .iter()
            .find_map(|k| t.get(*k).and_then(|a| a.address.as_deref()))
    });
    if let Some(url) = tagged {
        return url_place(url).map_err(|w| format!("has tagged address `{url}`: {w}"));
    }
    let host = svc
        .address
        .as_deref()
        .filter(|a| !a.is_empty())
        .or(node_address)
        .filter(|a| !a.is_empty())
        .ok_or("has no `Service.Address` and its node no `Address`")?;
    let port = svc
        .port
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            format!(
                "has `Service.Port` {}, not a port in 1..=65535",
                svc.port.unwrap_or(0)
            )
        })?;
    host_place(host, port).map_err(|w| format!("has address `{host}`: {w}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(json: &str, health: HealthFilter) -> Result<Option<Endpoint>, String> {
        let (mut found, mut bad) = parse(json.as_bytes(), "svc", health)?;
        if let Some(b) = bad.pop() {
            return Err(b);
        }
        Ok(found.pop().map(|f| f.endpoint))
    }

    #[test]
    fn go_zero_and_kratos_entries() {
        // go-zero: Service.Address and Port, tags and meta from its config.
        let ep = one(
            r#"[{"Node":{"Node":"n1","Address":"10.0.0.9","Datacenter":"dc1"},
                 "Service":{"ID":"user.rpc-10.0.0.1-8080","Service":"user.rpc","Tags":["a","b"],
                            "Address":"10.0.0.1","Port":8080,"Meta":{"k":"v"},
                            "Weights":{"Passing":7,"Warning":1}},
                 "Checks":[{"Status":"passing"},{"Status":"passing"}]}]"#,
            HealthFilter::Passing,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ep.addr.to_string(), "10.0.0.1:8080");
        assert_eq!(ep.weight, 7);
        assert_eq!(ep.metadata.get(META_CONSUL_TAGS).unwrap(), "a,b");
        assert_eq!(ep.metadata.get("meta.k").unwrap(), "v");
        assert_eq!(ep.metadata.get(META_CONSUL_NODE).unwrap(), "n1");
        assert_eq!(ep.metadata.get(META_CONSUL_DC).unwrap(), "dc1");
        assert_eq!(
            ep.metadata.get(META_CONSUL_ID).unwrap(),
            "user.rpc-10.0.0.1-8080"
        );
        // kratos: the grpc tagged address wins over Address/Port (the HTTP endpoint here),
        // the weight comes from the metadata, the version from the tag.
        let ep = one(
            r#"[{"Node":{"Node":"n1","Address":"10.0.0.9"},
                 "Service":{"ID":"id-1","Service":"helloworld","Tags":["version=v1.2"],
                            "Address":"10.0.0.2","Port":8000,"Meta":{"weight":"30"},
                            "TaggedAddresses":{"http":{"Address":"http://10.0.0.2:8000","Port":8000},
                                               "grpc":{"Address":"grpc://10.0.0.2:9000","Port":9000}}},
                 "Checks":[{"Status":"passing"}]}]"#,
            HealthFilter::Passing,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ep.addr.to_string(), "10.0.0.2:9000");
        assert_eq!(ep.weight, 30);
        assert_eq!(ep.metadata.get(META_VERSION).unwrap(), "v1.2");
        // The node's address when the service has none; null fields are absent fields.
        let ep = one(
            r#"[{"Node":{"Address":"10.0.0.9"},"Service":{"Address":"","Port":1,"Meta":null,
                 "Tags":null,"Weights":null},"Checks":null}]"#,
            HealthFilter::Passing,
        )
        .unwrap()
        .unwrap();
        assert_eq!(ep.addr.to_string(), "10.0.0.9:1");
        assert_eq!(ep.weight, DEFAULT_WEIGHT);
    }

    #[test]
    fn health_filters_and_warning_weights() {
        let entry = |status: &str| {
            format!(
                r#"[{{"Service":{{"Address":"10.0.0.1","Port":1,"Weights":{{"Passing":10,"Warning":2}}}},
                     "Checks":[{{"Status":"passing"}},{{"Status":"{status}"}}]}}]"#
            )
        };
        assert!(
            one(&entry("warning"), HealthFilter::Passing)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            one(&entry("warning"), HealthFilter::Warning)
                .unwrap()
                .unwrap()
                .weight,
            2
        );
        assert!(
            one(&entry("critical"), HealthFilter::Warning)
                .unwrap()
                .is_none()
        );
        let any = one(&entry("critical"), HealthFilter::Any).unwrap().unwrap();
        assert_eq!(any.weight, 10);
        assert_eq!(any.metadata.get(META_CONSUL_HEALTH).unwrap(), "critical");
        assert!(
            one(&entry("maintenance"), HealthFilter::Warning)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn bad_entries_are_reported_and_the_rest_kept() {
        let body = br#"[
            {"Service":{"ID":"good","Address":"10.0.0.1","Port":1}},
            {"Service":{"ID":"noport","Address":"10.0.0.2"}},
            {"Service":{"ID":"bigport","Address":"10.0.0.2","Port":70000}},
            {"Service":{"ID":"zero","Address":"0.0.0.0","Port":1}},
            {"Service":{"ID":"junk","Address":"not an address!","Port":1}},
            {"Service":{"ID":"w","Address":"10.0.0.3","Port":1,"Meta":{"weight":"heavy"}}},
            {"Service":{"ID":"t","TaggedAddresses":{"grpc":{"Address":"grpc://10.0.0.4"}}}},
            {"Service":"not an object"},
            {"Node":{}},
            {"Service":{"ID":"host","Address":"pod-1.example","Port":2}}
        ]"#;
        let (found, bad) = parse(body, "svc", HealthFilter::Passing).unwrap();
        assert_eq!(found.len(), 2, "{bad:?}");
        assert_eq!(found[0].place, Place::Ip("10.0.0.1:1".parse().unwrap()));
        assert_eq!(found[1].place, Place::Host("pod-1.example".into(), 2));
        assert_eq!(bad.len(), 8, "{bad:?}");
        for (b, want) in bad.iter().zip([
            "`noport` has `Service.Port` 0",
            "`bigport` has `Service.Port` 70000",
            "`zero` has address `0.0.0.0`: the unspecified",
            "`junk` has address `not an address!`",
            "`w` has `Meta.weight` `heavy`",
            "`t` has tagged address `grpc://10.0.0.4`: no port",
            "entry #8 of `svc` is malformed",
            "entry #9 of `svc`: it has no `Service`",
        ]) {
            assert!(b.contains(want), "{b} lacks {want}");
        }
        for garbage in [&b"{}"[..], b"null", b"<html>", b"", b"[1,2"] {
            let e = parse(garbage, "svc", HealthFilter::Passing).unwrap_err();
            assert!(e.contains("not a JSON list"), "{e}");
        }
    }
}
