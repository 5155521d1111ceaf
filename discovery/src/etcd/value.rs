//! How a key and its value become an endpoint, in go-zero's and kratos's formats.
//!
//! Each key is read on its own: a value that does not parse is skipped and reported, and
//! the others serve (kratos fails the whole list on one bad value: `getInstance` in
//! `contrib/registry/etcd/watcher.go`).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{EtcdFormat, EtcdTarget, META_ETCD_KEY, META_KRATOS_ID};
use crate::lookup::{Found, host_port_place, url_place};
use crate::{DEFAULT_WEIGHT, Endpoint, META_PREFIX, META_VERSION};

/// kratos's `registry.ServiceInstance` as JSON (`registry/registry.go`).
#[derive(Debug, Deserialize)]
struct KratosInstance {
    #[serde(default)]
    id: String,
    name: String,
    #[serde(default)]
    version: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    endpoints: Option<Vec<String>>,
}

/// At most this much of a bad value goes into a message.
const SHOWN: usize = 120;

fn shown(value: &[u8]) -> String {
    let s = String::from_utf8_lossy(value);
    if s.chars().count() > SHOWN {
        format!("{}...", s.chars().take(SHOWN).collect::<String>())
    } else {
        s.into_owned()
    }
}

/// The endpoint `key` = `value` stands for; `Ok(None)` for a kratos instance of another
/// service under the same prefix; `Err` says what is wrong with the value.
pub(crate) fn parse(target: &EtcdTarget, key: &str, value: &[u8]) -> Result<Option<Found>, String> {
    match target.format {
        EtcdFormat::GoZero => go_zero(key, value).map(Some),
        EtcdFormat::Kratos => kratos(target, key, value),
    }
}

/// go-zero's value is the plain `host:port` its server announces (`core/discov/publisher.go`).
fn go_zero(key: &str, value: &[u8]) -> Result<Found, String> {
    let s = std::str::from_utf8(value)
        .map_err(|_| format!("key `{key}`: the value is not UTF-8 text, so not `host:port`"))?
        .trim();
    let place = host_port_place(s).map_err(|why| {
        format!(
            "key `{key}`: value `{}` is not the `host:port` go-zero writes ({why})",
            shown(value)
        )
    })?;
    let ep = Endpoint::new(place.placeholder()).with_metadata(META_ETCD_KEY, key);
    Ok(Found::new(place, ep))
}

fn kratos(target: &EtcdTarget, key: &str, value: &[u8]) -> Result<Option<Found>, String> {
    let si: KratosInstance = serde_json::from_slice(value).map_err(|e| {
        format!(
            "key `{key}`: value `{}` is not a kratos service instance ({e})",
            shown(value)
        )
    })?;
    // The prefix `<namespace>/<name>/` can hold another service's instance only when
    // someone wrote it there by hand; kratos keeps the instances named `<name>`.
    if si.name != target.key {
        return Ok(None);
    }
    let who = if si.id.is_empty() {
        format!("key `{key}`")
    } else {
        format!("key `{key}` (instance `{}`)", si.id)
    };
    let endpoints = si.endpoints.unwrap_or_default();
    let scheme = format!("{}://", target.scheme);
    let Some(url) = endpoints.iter().find(|e| e.starts_with(&scheme)) else {
        let hint = if target.scheme == "grpc" && endpoints.iter().any(|e| e.starts_with("grpcs://"))
        {
            "; it has a `grpcs://` one: write `scheme=grpcs` in the target (and give the \
             channel TLS)"
        } else {
            ""
        };
        return Err(format!(
            "{who}: no `{scheme}` endpoint among {endpoints:?}{hint}"
        ));
    };
    let place = url_place(url).map_err(|why| format!("{who}: endpoint `{url}`: {why}"))?;
    let metadata = si.metadata.unwrap_or_default();
    // kratos's selector takes the weight from metadata["weight"] (`selector/default_node.go`).
    let weight = match metadata.get("weight") {
        None => DEFAULT_WEIGHT,
        Some(w) => w.trim().parse::<u32>().map_err(|_| {
            format!("{who}: metadata `weight` is `{w}`, not a whole number in 0..=4294967295")
        })?,
    };
    let mut ep = Endpoint::new(place.placeholder())
        .with_weight(weight)
        .with_metadata(META_ETCD_KEY, key);
    if !si.id.is_empty() {
        ep = ep.with_metadata(META_KRATOS_ID, si.id);
    }
    if !si.version.is_empty() {
        ep = ep.with_metadata(META_VERSION, si.version);
    }
    for (k, v) in metadata {
        ep = ep.with_metadata(format!("{META_PREFIX}{k}"), v);
    }
    Ok(Some(Found::new(place, ep)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Target;
    use crate::lookup::Place;

    fn target(s: &str) -> EtcdTarget {
        EtcdTarget::parse(&Target::split(s).unwrap()).unwrap()
    }

    #[test]
    fn go_zero_values() {
        let t = target("etcd:///h:2379?key=user.rpc");
        let f = parse(&t, "user.rpc/7587869234", b"10.0.0.1:8080")
            .unwrap()
            .unwrap();
        assert_eq!(f.place, Place::Ip("10.0.0.1:8080".parse().unwrap()));
        assert_eq!(f.endpoint.weight, DEFAULT_WEIGHT);
        assert_eq!(f.endpoint.metadata[META_ETCD_KEY], "user.rpc/7587869234");
        let f = parse(&t, "user.rpc/1", b"user-rpc-0.user:8080")
            .unwrap()
            .unwrap();
        assert_eq!(f.place, Place::Host("user-rpc-0.user".into(), 8080));
        for (v, want) in [
            (&b"10.0.0.1"[..], "no port"),
            (b"{\"host\":1}", "not the `host:port`"),
            (b"\xff\xfe", "not UTF-8"),
            (b"0.0.0.0:80", "unspecified"),
        ] {
            let e = parse(&t, "user.rpc/9", v).unwrap_err();
            assert!(e.contains("user.rpc/9") && e.contains(want), "{e}");
        }
    }

    #[test]
    fn kratos_values() {
        let t = target("etcd:///h:2379?key=helloworld&format=kratos");
        let v = br#"{"id":"a1","name":"helloworld","version":"v1.2","metadata":{"weight":"7","zone":"z"},"endpoints":["http://10.0.0.1:8000","grpc://10.0.0.1:9000"]}"#;
        let f = parse(&t, "/microservices/helloworld/a1", v)
            .unwrap()
            .unwrap();
        assert_eq!(f.place, Place::Ip("10.0.0.1:9000".parse().unwrap()));
        let ep = f.endpoint;
        assert_eq!(ep.weight, 7);
        assert_eq!(ep.metadata[META_VERSION], "v1.2");
        assert_eq!(ep.metadata[META_KRATOS_ID], "a1");
        assert_eq!(ep.metadata["meta.zone"], "z");
        // metadata may be null, as Go writes a nil map.
        let v = br#"{"id":"a2","name":"helloworld","version":"","metadata":null,"endpoints":["grpc://10.0.0.2:9000?isSecure=false"]}"#;
        let f = parse(&t, "/microservices/helloworld/a2", v)
            .unwrap()
            .unwrap();
        assert_eq!(f.endpoint.weight, DEFAULT_WEIGHT);
        // Another service's instance under the prefix is left out, not an error.
        let v = br#"{"id":"b","name":"helloworldfoo","endpoints":["grpc://10.0.0.3:9000"]}"#;
        assert!(
            parse(&t, "/microservices/helloworld/b", v)
                .unwrap()
                .is_none()
        );
        for (v, want) in [
            (&br#"not json"#[..], "not a kratos service instance"),
            (br#"{"id":"x"}"#, "missing field `name`"),
            (br#"{"id":"x","name":"helloworld","endpoints":["http://h:1"]}"#, "no `grpc://` endpoint"),
            (br#"{"id":"x","name":"helloworld","endpoints":["grpcs://h:1"]}"#, "scheme=grpcs"),
            (br#"{"id":"x","name":"helloworld","endpoints":["grpc://h"]}"#, "no port"),
            (
                br#"{"id":"x","name":"helloworld","metadata":{"weight":"heavy"},"endpoints":["grpc://h:1"]}"#,
                "`heavy`, not a whole number",
            ),
        ] {
            let e = parse(&t, "/microservices/helloworld/x", v).unwrap_err();
            assert!(e.contains("/microservices/helloworld/x") && e.contains(want), "{e}");
        }
        let tls = target("etcd:///h:2379?key=helloworld&format=kratos&scheme=grpcs");
        let v =
            br#"{"id":"x","name":"helloworld","endpoints":["grpc://h:1","grpcs://10.0.0.1:2"]}"#;
        let f = parse(&tls, "/microservices/helloworld/x", v)
            .unwrap()
            .unwrap();
        assert_eq!(f.place, Place::Ip("10.0.0.1:2".parse().unwrap()));
    }
}
