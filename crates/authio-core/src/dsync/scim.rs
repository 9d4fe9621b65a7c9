//! The SCIM 2.0 service of a directory (RFC 7644): Users and Groups read, filtered, paged,
//! projected, created, replaced, patched and deleted, in one transaction at the tenant's home
//! each, with their effect on Authio (the user, the organization membership and its role, the
//! sessions ended by a deactivation) and their audit event. Okta's and Entra ID's dialects are
//! accepted: capitalized operation names, booleans as strings, `replace` without a path.
use std::collections::{BTreeSet, HashMap};

use authio_db::{RowExt, ScopedTx, Type};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use super::filter::{self, key_of, Filter, Op};
use super::{DirectoryCtx, DirectorySync};
use crate::types::{Actor, ActorKind, ClientInfo, Email, Entity};
use crate::{audit, CoreError};

pub const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub const ENTERPRISE_SCHEMA: &str = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
/// The most resources one page holds (ServiceProviderConfig `filter.maxResults`).
pub const MAX_RESULTS: i64 = 1000;
/// The most resources a filter the database cannot answer is evaluated over.
const MAX_SCAN: i64 = 100_000;

/// An error in the shape of RFC 7644 3.12.
#[derive(Debug, Clone)]
pub struct ScimError {
    pub status: u16,
    pub scim_type: Option<&'static str>,
    pub detail: String,
    pub retry_after: Option<u32>,
}

impl ScimError {
    pub fn new(status: u16, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        ScimError { status, scim_type, detail: detail.into(), retry_after: None }
    }

    pub fn internal() -> Self {
        ScimError::new(500, None, "internal error")
    }

    pub fn too_many(retry_after: u32) -> Self {
        ScimError {
            retry_after: Some(retry_after),
            ..ScimError::new(429, None, "too many requests for this directory")
        }
    }

    fn invalid(detail: impl Into<String>) -> Self {
        ScimError::new(400, Some("invalidValue"), detail)
    }

    pub fn body(&self) -> Value {
        let mut v = json!({"schemas": [ERROR_SCHEMA], "status": self.status.to_string(), "detail": self.detail});
        if let Some(t) = self.scim_type {
            v["scimType"] = json!(t);
        }
        v
    }
}

impl From<CoreError> for ScimError {
    fn from(e: CoreError) -> Self {
        match e {
            CoreError::NotFound(what) => ScimError::new(404, None, format!("{} not found", what.noun())),
            CoreError::Conflict(m) => ScimError::new(409, Some("uniqueness"), m),
            CoreError::Invalid(v) => ScimError::invalid(v.to_string()),
            CoreError::RateLimited { retry_after } => ScimError::too_many(retry_after),
            CoreError::Forbidden(m) => ScimError::new(403, None, m),
            CoreError::Db(authio_db::DbError::Router(r)) => {
                tracing::warn!(error = %r, "SCIM request not routed");
                ScimError {
                    retry_after: Some(5),
                    ..ScimError::new(503, None, "the directory's database is unavailable; retry shortly")
                }
            }
            other => {
                tracing::error!(error = %other, "SCIM request failed");
                ScimError::internal()
            }
        }
    }
}

/// `filter`, `startIndex`, `count`, `attributes`, `excludedAttributes` of a list.
#[derive(Clone, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListQuery {
    pub filter: Option<String>,
    pub start_index: Option<String>,
    pub count: Option<String>,
    pub attributes: Option<String>,
    pub excluded_attributes: Option<String>,
}

/// Which attributes an answer holds.
#[derive(Clone, Debug, Default)]
pub struct Projection {
    only: Option<Vec<String>>,
    without: Vec<String>,
}

impl Projection {
    pub fn parse(attributes: Option<&str>, excluded: Option<&str>) -> Self {
        let list = |s: &str| s.split(',').map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect::<Vec<_>>();
        Projection { only: attributes.map(list), without: excluded.map(list).unwrap_or_default() }
    }

    /// RFC 7644 3.9: `id` and `schemas` are always returned; `meta` unless left out.
    fn apply(&self, mut r: Value) -> Value {
        let Some(obj) = r.as_object_mut() else { return r };
        if let Some(only) = &self.only {
            let keep = |k: &str| {
                k == "id"
                    || k == "schemas"
                    || only.iter().any(|a| {
                        let a = a
                            .rsplit_once(':')
                            .map(|(u, rest)| {
                                if u.to_ascii_lowercase().starts_with("urn:") && !filter::is_core(u) {
                                    a
                                } else {
                                    rest
                                }
                            })
                            .unwrap_or(a);
                        a.split('.').next().is_some_and(|top| top.eq_ignore_ascii_case(k))
                            || a.eq_ignore_ascii_case(k)
                            || k.to_ascii_lowercase().starts_with("urn:")
                                && a.to_ascii_lowercase().starts_with(&k.to_ascii_lowercase())
                    })
            };
            obj.retain(|k, _| keep(k));
        }
        for w in &self.without {
            let w = w.rsplit_once(':').filter(|(u, _)| filter::is_core(u)).map(|(_, a)| a).unwrap_or(w);
            match w.split_once('.') {
                Some((top, sub)) => {
                    if let Some(k) = key_of(obj, top).cloned() {
                        if let Some(inner) = obj.get_mut(&k).and_then(Value::as_object_mut) {
                            if let Some(sk) = key_of(inner, sub).cloned() {
                                inner.remove(&sk);
                            }
                        }
                    }
                }
                None if !w.eq_ignore_ascii_case("id") && !w.eq_ignore_ascii_case("schemas") => {
                    if let Some(k) = key_of(obj, w).cloned() {
                        obj.remove(&k);
                    }
                }
                None => {}
            }
        }
        r
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Walk a value: no NUL, no string over 4096 characters, no deeper than 8.
fn check_value(v: &Value, depth: usize) -> Result<(), ScimError> {
    if depth > 8 {
        return Err(ScimError::invalid("the resource is nested too deep"));
    }
    match v {
        Value::String(s) if s.contains('\0') || s.len() > 4096 => {
            Err(ScimError::invalid("a string holds NUL or is over 4096 characters"))
        }
        Value::Array(a) if a.len() > 1000 => Err(ScimError::invalid("a list is over 1000 values")),
        Value::Array(a) => a.iter().try_for_each(|x| check_value(x, depth + 1)),
        Value::Object(o) if o.len() > 200 => Err(ScimError::invalid("an object has over 200 attributes")),
        Value::Object(o) => o.iter().try_for_each(|(k, x)| {
            if k.contains('\0') || k.len() > 256 {
                return Err(ScimError::invalid("a bad attribute name"));
            }
            check_value(x, depth + 1)
        }),
        _ => Ok(()),
    }
}

/// Entra ID sends booleans as strings ("True"): the attributes that are booleans become ones.
fn coerce_booleans(v: &mut Value) {
    fn fix(x: &mut Value) {
        if let Value::String(s) = x {
            match s.to_ascii_lowercase().as_str() {
                "true" => *x = Value::Bool(true),
                "false" => *x = Value::Bool(false),
                _ => {}
            }
        }
    }
    let Some(obj) = v.as_object_mut() else { return };
    if let Some(k) = key_of(obj, "active").cloned() {
        if let Some(a) = obj.get_mut(&k) {
            fix(a);
        }
    }
    for multi in ["emails", "phoneNumbers", "addresses", "ims", "photos", "roles", "entitlements", "x509Certificates"] {
        if let Some(k) = key_of(obj, multi).cloned() {
            if let Some(Value::Array(items)) = obj.get_mut(&k) {
                for i in items.iter_mut().filter_map(Value::as_object_mut) {
                    if let Some(pk) = key_of(i, "primary").cloned() {
                        if let Some(p) = i.get_mut(&pk) {
                            fix(p);
                        }
                    }
                }
            }
        }
    }
}

fn get_ci<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    key_of(obj, name).and_then(|k| obj.get(k))
}

fn optional_string(obj: &Map<String, Value>, name: &'static str, max: usize) -> Result<Option<String>, ScimError> {
    match get_ci(obj, name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control) => {
            Ok(Some(s.clone()))
        }
        Some(_) => Err(ScimError::invalid(format!("{name}: a string of 1-{max} characters"))),
    }
}

/// A User as written, checked: (resource without id/meta, userName, externalId, active).
struct UserIn {
    resource: Value,
    user_name: String,
    external_id: Option<String>,
    active: bool,
}

fn user_in(body: &Value) -> Result<UserIn, ScimError> {
    check_value(body, 0)?;
    let mut resource = body.clone();
    coerce_booleans(&mut resource);
    let obj = resource.as_object_mut().ok_or_else(|| ScimError::invalid("a User is a JSON object"))?;
    // `password` is never kept (Okta sends one; nobody signs in with a SCIM password here).
    for ro in ["id", "meta", "groups", "password"] {
        if let Some(k) = key_of(obj, ro).cloned() {
            obj.remove(&k);
        }
    }
    let user_name = optional_string(obj, "userName", 256)?.ok_or_else(|| ScimError::invalid("userName is required"))?;
    let external_id = optional_string(obj, "externalId", 256)?;
    let active = match get_ci(obj, "active") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(ScimError::invalid("active: a boolean")),
    };
    if let Some(e) = get_ci(obj, "emails") {
        let ok = e.as_array().is_some_and(|a| a.iter().all(|i| i.get("value").is_none_or(Value::is_string)));
        if !ok {
            return Err(ScimError::invalid("emails: a list of {value, type, primary}"));
        }
    }
    // Entra ID sets the manager as the bare id: it is the manager's `value`.
    if let Some(ext) =
        key_of(obj, ENTERPRISE_SCHEMA).cloned().and_then(|k| obj.get_mut(&k)).and_then(Value::as_object_mut)
    {
        if let Some(mk) = key_of(ext, "manager").cloned() {
            if let Some(Value::String(id)) = ext.get(&mk).cloned() {
                ext.insert(mk, json!({"value": id}));
            }
        }
    }
    let mut schemas = vec![json!(USER_SCHEMA)];
    if key_of(obj, ENTERPRISE_SCHEMA).is_some() {
        schemas.push(json!(ENTERPRISE_SCHEMA));
    }
    obj.insert("schemas".into(), Value::Array(schemas));
    Ok(UserIn { resource, user_name, external_id, active })
}

/// The address an Authio user is found or made by: the primary email, else the work one,
/// else the first, else a userName that is an address.
fn email_of(u: &UserIn) -> Option<Email> {
    let obj = u.resource.as_object()?;
    let emails: Vec<&Value> =
        get_ci(obj, "emails").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default();
    fn value<'a>(e: &&'a Value) -> Option<&'a str> {
        e.get("value").and_then(Value::as_str)
    }
    let pick = emails
        .iter()
        .find(|e| e.get("primary") == Some(&Value::Bool(true)))
        .or_else(|| {
            emails
                .iter()
                .find(|e| e.get("type").and_then(Value::as_str).is_some_and(|t| t.eq_ignore_ascii_case("work")))
        })
        .or_else(|| emails.first())
        .and_then(value);
    pick.and_then(|e| Email::parse(e).ok()).or_else(|| Email::parse(&u.user_name).ok())
}

fn names_of(u: &UserIn) -> (Option<String>, Option<String>) {
    let name = u.resource.as_object().and_then(|o| get_ci(o, "name")).and_then(Value::as_object);
    let part = |k: &str| {
        name.and_then(|n| get_ci(n, k))
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty() && s.chars().count() <= 200)
            .map(str::to_owned)
    };
    (part("givenName"), part("familyName"))
}

const USER_COLS: &str = "id, user_id, user_name, external_id, active, resource, version, created_at, updated_at";
const GROUP_COLS: &str = "id, display_name, external_id, resource, version, created_at, updated_at";

fn render_user(ctx: &DirectoryCtx, r: &authio_db::Row) -> Result<Value, CoreError> {
    let id: Uuid = r.col("id")?;
    let mut v: Value = r.col("resource")?;
    let obj = v.as_object_mut().ok_or_else(|| CoreError::Internal("resource".into()))?;
    obj.insert("id".into(), json!(id));
    obj.insert("userName".into(), json!(r.col::<String>("user_name")?));
    // `active` as it was written: absent when removed (the account then counts as active).
    if let Some(k) = key_of(obj, "active").cloned() {
        obj.insert(k, json!(r.col::<bool>("active")?));
    }
    match r.col::<Option<String>>("external_id")? {
        Some(e) => obj.insert("externalId".into(), json!(e)),
        None => obj.remove("externalId"),
    };
    obj.insert(
        "meta".into(),
        json!({
            "resourceType": "User",
            "created": time(r.col("created_at")?),
            "lastModified": time(r.col("updated_at")?),
            "location": format!("{}/Users/{id}", ctx.base),
            "version": format!("W/\"{}\"", r.col::<i64>("version")?),
        }),
    );
    Ok(v)
}

fn render_group(ctx: &DirectoryCtx, r: &authio_db::Row, members: &[(Uuid, String)]) -> Result<Value, CoreError> {
    let id: Uuid = r.col("id")?;
    let mut v: Value = r.col("resource")?;
    let obj = v.as_object_mut().ok_or_else(|| CoreError::Internal("resource".into()))?;
    obj.insert("id".into(), json!(id));
    obj.insert("displayName".into(), json!(r.col::<String>("display_name")?));
    match r.col::<Option<String>>("external_id")? {
        Some(e) => obj.insert("externalId".into(), json!(e)),
        None => obj.remove("externalId"),
    };
    let list: Vec<Value> = members
        .iter()
        .map(|(m, _)| json!({"value": m, "$ref": format!("{}/Users/{m}", ctx.base), "type": "User"}))
        .collect();
    obj.insert("members".into(), Value::Array(list));
    obj.insert(
        "meta".into(),
        json!({
            "resourceType": "Group",
            "created": time(r.col("created_at")?),
            "lastModified": time(r.col("updated_at")?),
            "location": format!("{}/Groups/{id}", ctx.base),
            "version": format!("W/\"{}\"", r.col::<i64>("version")?),
        }),
    );
    Ok(v)
}

/// The audit target: the Authio user, or the directory user while it has no account.
fn target(user: Option<Uuid>, scim_id: Uuid) -> Option<(&'static str, String)> {
    Some(match user {
        Some(u) => ("user", u.to_string()),
        None => ("directory_user", scim_id.to_string()),
    })
}

fn actor(ctx: &DirectoryCtx) -> Actor {
    Actor {
        kind: ActorKind::System,
        id: Some(format!("directory:{}", ctx.directory)),
        name: Some("SCIM directory".into()),
    }
}

/// A filter the database answers through an index: `userName eq`, `externalId eq`,
/// `displayName eq` (groups).
fn indexed(f: &Filter) -> Option<(&'static str, String)> {
    if let Filter::Compare(p, Op::Eq, Value::String(v)) = f {
        if p.sub.is_none() && p.urn.as_deref().is_none_or(filter::is_core) {
            return match p.attr.to_ascii_lowercase().as_str() {
                "username" => Some(("lower(user_name) = lower($2)", v.clone())),
                "externalid" => Some(("external_id = $2", v.clone())),
                "displayname" => Some(("lower(display_name) = lower($2)", v.clone())),
                _ => None,
            };
        }
    }
    None
}

fn page_of(q: &ListQuery) -> Result<(i64, i64), ScimError> {
    let num = |s: &Option<String>, default: i64| -> Result<i64, ScimError> {
        match s.as_deref() {
            None | Some("") => Ok(default),
            Some(v) => v.parse::<i64>().map_err(|_| ScimError::invalid("startIndex and count are integers")),
        }
    };
    // RFC 7644 3.4.2.4: startIndex below 1 is 1; a negative count is 0.
    let start = num(&q.start_index, 1)?.max(1);
    let count = num(&q.count, 100)?.clamp(0, MAX_RESULTS);
    Ok((start, count))
}

fn list_response(total: usize, start: i64, resources: Vec<Value>) -> Value {
    json!({
        "schemas": [LIST_SCHEMA],
        "totalResults": total,
        "startIndex": start,
        "itemsPerPage": resources.len(),
        "Resources": resources,
    })
}

fn parse_filter(q: &ListQuery) -> Result<Option<Filter>, ScimError> {
    q.filter
        .as_deref()
        .filter(|f| !f.trim().is_empty())
        .map(filter::parse)
        .transpose()
        .map_err(|e| ScimError::new(400, Some("invalidFilter"), e.0))
}

fn parse_id(raw: &str, what: Entity) -> Result<Uuid, ScimError> {
    Uuid::parse_str(raw).map_err(|_| ScimError::from(CoreError::NotFound(what)))
}

/// Apply a PatchOp request (RFC 7644 3.5.2) to a resource. `members` is any multi-valued
/// attribute; elements are matched by the filter in their path or by their `value`.
pub fn apply_patch(resource: &mut Value, body: &Value) -> Result<(), ScimError> {
    check_value(body, 0)?;
    let obj = body.as_object().ok_or_else(|| ScimError::invalid("a PatchOp is a JSON object"))?;
    let ops = get_ci(obj, "Operations")
        .and_then(Value::as_array)
        .ok_or_else(|| ScimError::invalid("Operations is required"))?;
    if ops.is_empty() || ops.len() > 1000 {
        return Err(ScimError::invalid("Operations: 1-1000 operations"));
    }
    for op in ops {
        let o = op.as_object().ok_or_else(|| ScimError::invalid("an operation is an object"))?;
        let name = get_ci(o, "op").and_then(Value::as_str).unwrap_or_default().to_ascii_lowercase();
        let path = get_ci(o, "path").and_then(Value::as_str).filter(|p| !p.is_empty());
        let value = get_ci(o, "value").cloned();
        match (name.as_str(), path) {
            ("add" | "replace", None) => {
                let Some(Value::Object(v)) = value else {
                    return Err(ScimError::invalid("an add or replace without a path takes an object value"));
                };
                for (k, x) in v {
                    // Entra ID: `{"name.givenName": "x"}` and extension attributes by URN.
                    set_path(resource, &k, x, name == "add")?;
                }
            }
            ("add" | "replace", Some(p)) => {
                let v = value.ok_or_else(|| ScimError::invalid("add and replace take a value"))?;
                set_path(resource, p, v, name == "add")?;
            }
            ("remove", Some(p)) => remove_path(resource, p, value.as_ref())?,
            ("remove", None) => return Err(ScimError::new(400, Some("noTarget"), "remove needs a path")),
            _ => return Err(ScimError::invalid(format!("unknown operation {name:?}"))),
        }
    }
    Ok(())
}

/// The object an attribute path's URN selects (the resource itself for the core schema),
/// made when absent.
fn container<'a>(resource: &'a mut Value, urn: Option<&str>) -> Result<&'a mut Map<String, Value>, ScimError> {
    let root = resource.as_object_mut().ok_or_else(ScimError::internal)?;
    match urn {
        Some(u) if !filter::is_core(u) => {
            let k = key_of(root, u).cloned().unwrap_or_else(|| u.to_owned());
            let slot = root.entry(k).or_insert_with(|| json!({}));
            if !slot.is_object() {
                *slot = json!({});
            }
            slot.as_object_mut().ok_or_else(ScimError::internal)
        }
        _ => Ok(root),
    }
}

fn set_path(resource: &mut Value, raw: &str, value: Value, add: bool) -> Result<(), ScimError> {
    if is_extension(raw) {
        // The whole extension, by its URN.
        let root = resource.as_object_mut().ok_or_else(ScimError::internal)?;
        let k = key_of(root, raw).cloned().unwrap_or_else(|| raw.to_owned());
        match (add, root.get_mut(&k), value) {
            (true, Some(Value::Object(o)), Value::Object(v)) => o.extend(v),
            (_, _, v) => {
                root.insert(k, v);
            }
        }
        return Ok(());
    }
    let p = filter::parse_patch_path(raw).map_err(|e| ScimError::new(400, Some("invalidPath"), e.0))?;
    let obj = container(resource, p.attr.urn.as_deref())?;
    let key = key_of(obj, &p.attr.attr).cloned().unwrap_or_else(|| p.attr.attr.clone());
    match (&p.filter, &p.sub) {
        (None, None) => {
            let slot = obj.entry(key).or_insert(Value::Null);
            match (add, &mut *slot, value) {
                // RFC 7644 3.5.2.1: add to a multi-valued attribute appends (without repeats).
                (true, Value::Array(items), Value::Array(new)) => {
                    // Compared by `value` through a set: adding n members to m is not n x m.
                    let mut seen: std::collections::HashSet<String> = items.iter().map(element_key).collect();
                    for n in new {
                        if seen.insert(element_key(&n)) {
                            items.push(n);
                        }
                    }
                    if items.len() > MAX_MEMBERS {
                        return Err(ScimError::invalid("a list grew over 100000 values"));
                    }
                }
                (true, Value::Object(o), Value::Object(new)) => o.extend(new),
                (_, slot, v) => *slot = v,
            }
        }
        (None, Some(sub)) => {
            let slot = obj.entry(key).or_insert_with(|| json!({}));
            if !slot.is_object() {
                *slot = json!({});
            }
            let inner = slot.as_object_mut().ok_or_else(ScimError::internal)?;
            let sk = key_of(inner, sub).cloned().unwrap_or_else(|| sub.clone());
            inner.insert(sk, value);
        }
        (Some(f), sub) => {
            let slot = obj.entry(key).or_insert_with(|| json!([]));
            if !slot.is_array() {
                *slot = json!([]);
            }
            let items = slot.as_array_mut().ok_or_else(ScimError::internal)?;
            let mut hit = false;
            for i in items.iter_mut().filter(|i| filter::matches(i, f)) {
                hit = true;
                match (sub, i.as_object_mut()) {
                    (Some(s), Some(o)) => {
                        let sk = key_of(o, s).cloned().unwrap_or_else(|| s.clone());
                        o.insert(sk, value.clone());
                    }
                    (None, Some(o)) => {
                        if let Value::Object(v) = &value {
                            o.extend(v.clone());
                        }
                    }
                    _ => {}
                }
            }
            if !hit {
                // Entra ID: `emails[type eq "work"].value` on a user without a work email adds
                // one, with the filter's equalities as its other attributes.
                let mut element = Map::new();
                equalities(f, &mut element);
                match (sub, value) {
                    (Some(s), v) => {
                        element.insert(s.clone(), v);
                    }
                    (None, Value::Object(v)) => element.extend(v),
                    (None, _) => return Err(ScimError::new(400, Some("noTarget"), format!("nothing matches {raw:?}"))),
                }
                items.push(Value::Object(element));
            }
        }
    }
    coerce_booleans(resource);
    Ok(())
}

fn equalities(f: &Filter, into: &mut Map<String, Value>) {
    match f {
        Filter::Compare(p, Op::Eq, v) if p.sub.is_none() => {
            into.insert(p.attr.clone(), v.clone());
        }
        Filter::And(a, b) => {
            equalities(a, into);
            equalities(b, into);
        }
        _ => {}
    }
}

/// What makes two elements of a multi-valued attribute the same: their `value`, else all of it.
fn element_key(v: &Value) -> String {
    match v.get("value") {
        Some(x) => format!("v:{x}"),
        None => format!("w:{v}"),
    }
}

/// A schema extension's URN (not an attribute under one).
fn is_extension(raw: &str) -> bool {
    raw.eq_ignore_ascii_case(ENTERPRISE_SCHEMA)
}

fn remove_path(resource: &mut Value, raw: &str, value: Option<&Value>) -> Result<(), ScimError> {
    if is_extension(raw) {
        if let Some(root) = resource.as_object_mut() {
            if let Some(k) = key_of(root, raw).cloned() {
                root.remove(&k);
            }
        }
        return Ok(());
    }
    let p = filter::parse_patch_path(raw).map_err(|e| ScimError::new(400, Some("invalidPath"), e.0))?;
    let obj = container(resource, p.attr.urn.as_deref())?;
    let Some(key) = key_of(obj, &p.attr.attr).cloned() else { return Ok(()) };
    match (&p.filter, &p.sub) {
        (None, None) => match (obj.get_mut(&key), value) {
            // Entra ID: remove members by listing them as the value.
            (Some(Value::Array(items)), Some(Value::Array(gone))) => {
                let gone: std::collections::HashSet<String> = gone.iter().map(element_key).collect();
                items.retain(|i| !gone.contains(&element_key(i)))
            }
            _ => {
                obj.remove(&key);
            }
        },
        (None, Some(sub)) => {
            if let Some(inner) = obj.get_mut(&key).and_then(Value::as_object_mut) {
                if let Some(sk) = key_of(inner, sub).cloned() {
                    inner.remove(&sk);
                }
            }
        }
        (Some(f), None) => {
            if let Some(items) = obj.get_mut(&key).and_then(Value::as_array_mut) {
                items.retain(|i| !filter::matches(i, f));
            }
        }
        (Some(f), Some(sub)) => {
            if let Some(items) = obj.get_mut(&key).and_then(Value::as_array_mut) {
                for i in items.iter_mut().filter(|i| filter::matches(i, f)) {
                    if let Some(o) = i.as_object_mut() {
                        if let Some(sk) = key_of(o, sub).cloned() {
                            o.remove(&sk);
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

impl DirectorySync {
    // ---- Users ----

    pub async fn list_users(&self, ctx: &DirectoryCtx, q: &ListQuery) -> Result<Value, ScimError> {
        let f = parse_filter(q)?;
        let (start, count) = page_of(q)?;
        let proj = Projection::parse(q.attributes.as_deref(), q.excluded_attributes.as_deref());
        let tx = self.identity.inner.router.begin(&ctx.scope).await.map_err(CoreError::from)?;
        let rows = match f.as_ref().and_then(indexed).filter(|(sql, _)| !sql.contains("display_name")) {
            Some((sql, v)) => {
                tx.query(
                    &format!("SELECT {USER_COLS} FROM directory_users WHERE directory_id = $1 AND {sql} ORDER BY created_at, id"),
                    &[(&ctx.directory, Type::UUID), (&v, Type::TEXT)],
                )
                .await
            }
            None => {
                tx.query(
                    &format!("SELECT {USER_COLS} FROM directory_users WHERE directory_id = $1 ORDER BY created_at, id LIMIT {MAX_SCAN}"),
                    &[(&ctx.directory, Type::UUID)],
                )
                .await
            }
        }
        .map_err(CoreError::from)?;
        tx.commit().await.map_err(CoreError::from)?;
        let mut all = Vec::new();
        for r in &rows {
            let v = render_user(ctx, r)?;
            if f.as_ref().is_none_or(|f| filter::matches(&v, f)) {
                all.push(v);
            }
        }
        let total = all.len();
        let page: Vec<Value> =
            all.into_iter().skip((start - 1) as usize).take(count as usize).map(|v| proj.apply(v)).collect();
        Ok(list_response(total, start, page))
    }

    pub async fn get_user(&self, ctx: &DirectoryCtx, id: &str, proj: &Projection) -> Result<Value, ScimError> {
        let id = parse_id(id, Entity::User)?;
        let tx = self.identity.inner.router.begin(&ctx.scope).await.map_err(CoreError::from)?;
        let row = tx
            .query_opt(
                &format!("SELECT {USER_COLS} FROM directory_users WHERE directory_id = $1 AND id = $2"),
                &[(&ctx.directory, Type::UUID), (&id, Type::UUID)],
            )
            .await
            .map_err(CoreError::from)?
            .ok_or(CoreError::NotFound(Entity::User))?;
        tx.commit().await.map_err(CoreError::from)?;
        Ok(proj.apply(render_user(ctx, &row)?))
    }

    async fn unique_user(tx: &ScopedTx, ctx: &DirectoryCtx, u: &UserIn, except: Option<Uuid>) -> Result<(), ScimError> {
        let clash = tx
            .query_opt(
                "SELECT 1 FROM directory_users WHERE directory_id = $1 AND id IS DISTINCT FROM $2
                    AND (lower(user_name) = lower($3) OR external_id = $4)",
                &[
                    (&ctx.directory, Type::UUID),
                    (&except, Type::UUID),
                    (&u.user_name, Type::TEXT),
                    (&u.external_id, Type::TEXT),
                ],
            )
            .await
            .map_err(CoreError::from)?;
        if clash.is_some() {
            return Err(ScimError::new(409, Some("uniqueness"), "a user with this userName or externalId exists"));
        }
        Ok(())
    }

    /// The Authio account a directory user with this address is, if the organization may
    /// speak for it: an address at one of the organization's verified domains (the account
    /// made, or the project's account with it linked; one nobody had proved is taken from
    /// whoever made it: its password goes and its sessions end), or the account of one of the
    /// organization's members. Any other address links nothing: a directory cannot reach the
    /// accounts of people its organization does not own. Returns (user, made now).
    async fn link_account(
        tx: &ScopedTx,
        ctx: &DirectoryCtx,
        email: &Email,
        (given, family): (Option<&str>, Option<&str>),
        now: DateTime<Utc>,
    ) -> Result<Option<(Uuid, bool)>, ScimError> {
        let domain = email.as_str().rsplit_once('@').map(|(_, d)| d).unwrap_or_default();
        let vouch = tx
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM organization_domains WHERE organization_id = $1 AND domain = $2
                                   AND verified_at IS NOT NULL) AS at_domain,
                        (SELECT u.id FROM users u JOIN memberships m ON m.tenant_id = u.tenant_id AND m.user_id = u.id
                          WHERE u.email = $3 AND m.organization_id = $1) AS member",
                &[(&ctx.organization, Type::UUID), (&domain, Type::TEXT), (&email.as_str(), Type::TEXT)],
            )
            .await
            .map_err(CoreError::from)?;
        let at_domain: bool = vouch.col("at_domain").map_err(CoreError::from)?;
        let member: Option<Uuid> = vouch.col("member").map_err(CoreError::from)?;
        if !at_domain {
            let Some(user) = member else { return Ok(None) };
            set_names(tx, user, given, family).await?;
            return Ok(Some((user, false)));
        }
        // One statement: the account made, or the existing one locked, proved and its names
        // updated (`prev` sees the row as it was before).
        let row = tx
            .query_one(
                "WITH prev AS (SELECT email_verified FROM users WHERE email = $4),
                      up AS (
                 INSERT INTO users (tenant_id, project_id, id, email, email_verified, given_name, family_name,
                                    created_at, updated_at)
                 VALUES ($1, $2, $3, $4, true, $5, $6, $7, $7)
                 ON CONFLICT (tenant_id, project_id, email) DO UPDATE
                    SET given_name = coalesce(excluded.given_name, users.given_name),
                        family_name = coalesce(excluded.family_name, users.family_name),
                        password_hash = CASE WHEN users.email_verified THEN users.password_hash END,
                        email_verified = true
                 RETURNING id, (xmax = 0) AS created)
                 SELECT up.id, up.created, coalesce((SELECT NOT email_verified FROM prev), false) AS taken_over FROM up",
                &[
                    (&ctx.scope.tenant_id, Type::UUID),
                    (&ctx.scope.project_id, Type::UUID),
                    (&Uuid::now_v7(), Type::UUID),
                    (&email.as_str(), Type::TEXT),
                    (&given, Type::TEXT),
                    (&family, Type::TEXT),
                    (&now, Type::TIMESTAMPTZ),
                ],
            )
            .await
            .map_err(CoreError::from)?;
        let user_id: Uuid = row.col("id").map_err(CoreError::from)?;
        if row.col::<bool>("taken_over").map_err(CoreError::from)? {
            // Whoever made this account never proved the address; the organization just did.
            tx.query(
                "UPDATE sessions SET revoked_at = $2, revoked_reason = 'unverified_account_linked'
                  WHERE user_id = $1 AND revoked_at IS NULL",
                &[(&user_id, Type::UUID), (&now, Type::TIMESTAMPTZ)],
            )
            .await
            .map_err(CoreError::from)?;
        }
        Ok(Some((user_id, row.col("created").map_err(CoreError::from)?)))
    }

    /// Create a user. One with no email address (in `emails`, or as its userName) is kept in
    /// the directory without an Authio account until an address arrives: nobody could sign
    /// in as it.
    pub async fn create_user(&self, ctx: &DirectoryCtx, body: &Value, client: &ClientInfo) -> Result<Value, ScimError> {
        let u = user_in(body)?;
        let now = self.identity.now();
        let tx = self.identity.inner.router.begin(&ctx.scope).await.map_err(CoreError::from)?;
        let (given, family) = names_of(&u);
        let (user_id, created) = match email_of(&u) {
            Some(email) => {
                let names = (given.as_deref(), family.as_deref());
                match Self::link_account(&tx, ctx, &email, names, now).await? {
                    Some((id, created)) => (Some(id), created),
                    None => (None, false),
                }
            }
            None => (None, false),
        };
        let id = Uuid::now_v7();
        let row = tx
            .query_opt(
                &format!(
                    "INSERT INTO directory_users (tenant_id, project_id, directory_id, id, user_id, user_name, external_id,
                                                  active, resource, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $10)
                     ON CONFLICT DO NOTHING RETURNING {USER_COLS}"
                ),
                &[
                    (&ctx.scope.tenant_id, Type::UUID),
                    (&ctx.scope.project_id, Type::UUID),
                    (&ctx.directory, Type::UUID),
                    (&id, Type::UUID),
                    (&user_id, Type::UUID),
                    (&u.user_name, Type::TEXT),
                    (&u.external_id, Type::TEXT),
                    (&u.active, Type::BOOL),
                    (&u.resource, Type::JSONB),
                    (&now, Type::TIMESTAMPTZ),
                ],
            )
            .await
            .map_err(CoreError::from)?
            // A unique index said no (the transaction, and any account made in it, rolls back).
            .ok_or_else(|| {
                ScimError::new(409, Some("uniqueness"), "a user with this userName, externalId or email address exists")
            })?;
        let ended = match user_id {
            // A new directory user is in no group yet: the default role.
            Some(uid) => self.set_membership(&tx, ctx, uid, u.active, false, now).await?,
            None => None,
        };
        let event = audit::Event {
            action: crate::audit::AuditAction::DsyncUserCreated,
            actor: actor(ctx),
            target: target(user_id, id),
            client,
            metadata: json!({
                "directory_id": ctx.directory, "organization_id": ctx.organization, "scim_id": id,
                "user_name": u.user_name, "external_id": u.external_id, "active": u.active,
                "user_created": created, "sessions_ended": ended,
            }),
        };
        let row_value = render_user(ctx, &row)?;
        audit::record_and_commit(tx, &ctx.scope, event, now).await?;
        Ok(row_value)
    }

    /// Replace (PUT) or patch a user: the new resource written, its effects applied.
    pub async fn replace_user(
        &self,
        ctx: &DirectoryCtx,
        id: &str,
        body: &Value,
        client: &ClientInfo,
    ) -> Result<Value, ScimError> {
        self.change_user(ctx, id, client, |_| Ok(body.clone())).await
    }

    pub async fn patch_user(
        &self,
        ctx: &DirectoryCtx,
        id: &str,
        body: &Value,
        client: &ClientInfo,
    ) -> Result<Value, ScimError> {
        self.change_user(ctx, id, client, |current| {
            let mut r = current.clone();
            apply_patch(&mut r, body)?;
            Ok(r)
        })
        .await
    }

    async fn change_user(
        &self,
        ctx: &DirectoryCtx,
        id: &str,
        client: &ClientInfo,
        change: impl FnOnce(&Value) -> Result<Value, ScimError>,
    ) -> Result<Value, ScimError> {
        let id = parse_id(id, Entity::User)?;
        let now = self.identity.now();
        let tx = self.identity.inner.router.begin(&ctx.scope).await.map_err(CoreError::from)?;
        let current = tx
            .query_opt(
                &format!("SELECT {USER_COLS} FROM directory_users WHERE directory_id = $1 AND id = $2 FOR UPDATE"),
                &[(&ctx.directory, Type::UUID), (&id, Type::UUID)],
            )
            .await
            .map_err(CoreError::from)?
            .ok_or(CoreError::NotFound(Entity::User))?;
        let mut user_id: Option<Uuid> = current.col("user_id").map_err(CoreError::from)?;
        let was_active: bool = current.col("active").map_err(CoreError::from)?;
        let mut view = render_user(ctx, &current)?;
        if let Some(o) = view.as_object_mut() {
            o.remove("meta");
        }
        let u = user_in(&change(&view)?)?;
        Self::unique_user(&tx, ctx, &u, Some(id)).await?;
        // An address arrived for a user that had none: its Authio account now.
        let (given, family) = names_of(&u);
        let names = (given.as_deref(), family.as_deref());
        let mut linked_now = false;
        match (user_id, email_of(&u)) {
            (None, Some(email)) => 'link: {
                let Some((uid, _)) = Self::link_account(&tx, ctx, &email, names, now).await? else { break 'link };
                let taken = tx
                    .query_opt(
                        "SELECT 1 FROM directory_users WHERE directory_id = $1 AND user_id = $2 AND id <> $3",
                        &[(&ctx.directory, Type::UUID), (&uid, Type::UUID), (&id, Type::UUID)],
                    )
                    .await
                    .map_err(CoreError::from)?;
                if taken.is_some() {
                    return Err(ScimError::new(
                        409,
                        Some("uniqueness"),
                        "another user of this directory has this email address",
                    ));
                }
                user_id = Some(uid);
                linked_now = true;
            }
            (Some(uid), _) => set_names(&tx, uid, names.0, names.1).await?,
            (None, None) => {}
        }
        let row = tx
            .query_one(
                &format!(
                    "UPDATE directory_users SET user_name = $2, external_id = $3, active = $4, resource = $5,
                         version = version + 1, updated_at = $6, user_id = $7 WHERE id = $1 RETURNING {USER_COLS}"
                ),
                &[
                    (&id, Type::UUID),
                    (&u.user_name, Type::TEXT),
                    (&u.external_id, Type::TEXT),
                    (&u.active, Type::BOOL),
                    (&u.resource, Type::JSONB),
                    (&now, Type::TIMESTAMPTZ),
                    (&user_id, Type::UUID),
                ],
            )
            .await
            .map_err(CoreError::from)?;
        let ended = match user_id {
            Some(uid) if was_active != u.active || linked_now => {
                self.set_membership(&tx, ctx, uid, u.active, true, now).await?
            }
            _ => None,
        };
        let action = match (was_active, u.active) {
            (true, false) => crate::audit::AuditAction::DsyncUserDeactivated,
            (false, true) => crate::audit::AuditAction::DsyncUserReactivated,
            _ => crate::audit::AuditAction::DsyncUserUpdated,
        };
        let event = audit::Event {
            action,
            actor: actor(ctx),
            target: target(user_id, id),
            client,
            metadata: json!({
                "directory_id": ctx.directory, "organization_id": ctx.organization, "scim_id": id,
                "user_name": u.user_name, "active": u.active, "sessions_ended": ended,
            }),
        };
        let out = render_user(ctx, &row)?;
        audit::record_and_commit(tx, &ctx.scope, event, now).await?;
        Ok(out)
    }

    /// Delete a user from the directory: the membership goes and every session ends; the
    /// Authio account stays (other organizations may know it).
    pub async fn delete_user(&self, ctx: &DirectoryCtx, id: &str, client: &ClientInfo) -> Result<(), ScimError> {
        let id = parse_id(id, Entity::User)?;
        let now = self.identity.now();
        let tx = self.identity.inner.router.begin(&ctx.scope).await.map_err(CoreError::from)?;
        let row = tx
            .query_opt(
                "DELETE FROM directory_users WHERE directory_id = $1 AND id = $2 RETURNING user_id, user_name",
                &[(&ctx.directory, Type::UUID), (&id, Type::UUID)],
            )
            .await
            .map_err(CoreError::from)?
            .ok_or(CoreError::NotFound(Entity::User))?;
        let user_id: Option<Uuid> = row.col("user_id").map_err(CoreError::from)?;
        tx.query(
            "DELETE FROM memberships WHERE organization_id = $1 AND user_id = $2",
            &[(&ctx.organization, Type::UUID), (&user_id, Type::UUID)],
        )
        .await
        .map_err(CoreError::from)?;
        let ended = match user_id {
            Some(uid) => Some(end_sessions(&tx, uid, now).await?),
            None => None,
        };
        let event = audit::Event {
            action: crate::audit::AuditAction::DsyncUserDeleted,
            actor: actor(ctx),
            target: target(user_id, id),
            client,
            metadata: json!({
                "directory_id": ctx.directory, "organization_id": ctx.organization, "scim_id": id,
                "user_name": row.col::<String>("user_name").map_err(CoreError::from)?, "sessions_ended": ended,
            }),
        };
        audit::record_and_commit(tx, &ctx.scope, event, now).await?;
        Ok(())
    }

    /// The user's membership of the directory's organization follows `active`, with the role
    /// of their groups; a deactivation ends every live session of the user (their refresh
    /// tokens die with them). Returns how many sessions ended.
    async fn set_membership(
        &self,
        tx: &ScopedTx,
        ctx: &DirectoryCtx,
        user: Uuid,
        active: bool,
        by_groups: bool,
        now: DateTime<Utc>,
    ) -> Result<Option<usize>, ScimError> {
        let status = if active { "active" } else { "deactivated" };
        let role = if by_groups { role_of_user("$4", "$7") } else { DEFAULT_ROLE.to_owned() };
        let params: [authio_db::Param; 7] = [
            (&ctx.scope.tenant_id, Type::UUID),
            (&ctx.scope.project_id, Type::UUID),
            (&ctx.organization, Type::UUID),
            (&user, Type::UUID),
            (&status, Type::TEXT),
            (&now, Type::TIMESTAMPTZ),
            (&ctx.directory, Type::UUID),
        ];
        let placed = tx
            .query_opt(
                &format!(
                    "INSERT INTO memberships (tenant_id, project_id, organization_id, user_id, role_id, status, created_at,
                                              updated_at)
                     SELECT $1, $2, $3, $4, x.role_id, $5, $6, $6 FROM (SELECT {} AS role_id) x
                      WHERE x.role_id IS NOT NULL
                     ON CONFLICT (tenant_id, organization_id, user_id) DO UPDATE SET status = excluded.status,
                         role_id = excluded.role_id, updated_at = excluded.updated_at
                     RETURNING 1",
                    role
                ),
                // ($7, the directory, only where the role comes from groups.)
                if by_groups { &params[..] } else { &params[..6] },
            )
            .await
            .map_err(CoreError::from)?;
        if placed.is_none() {
            return Err(ScimError::invalid("the project has no default role and no group of this user maps to one"));
        }
        if active {
            return Ok(None);
        }
        Ok(Some(end_sessions(tx, user, now).await?))
    }

    /// Members' roles after their groups changed (active members only), in one statement.
    async fn sync_roles(
        &self,
        tx: &ScopedTx,
        ctx: &DirectoryCtx,
        members: &BTreeSet<Uuid>,
        now: DateTime<Utc>,
    ) -> Result<(), ScimError> {
        if members.is_empty() {
            return Ok(());
        }
        let list: Vec<Uuid> = members.iter().copied().collect();
        tx.query(
            &format!(
                "UPDATE memberships m SET role_id = x.role_id, updated_at = $3
                   FROM (SELECT du.user_id, {} AS role_id FROM directory_users du
                          WHERE du.directory_id = $4 AND du.id = ANY ($2) AND du.active AND du.user_id IS NOT NULL) x
                  WHERE m.organization_id = $1 AND m.user_id = x.user_id AND x.role_id IS NOT NULL
                    AND m.role_id <> x.role_id",
                role_of_user("du.user_id", "$4")
            ),
            &[
                (&ctx.organization, Type::UUID),
                (&list, Type::UUID_ARRAY),
                (&now, Type::TIMESTAMPTZ),
                (&ctx.directory, Type::UUID),
            ],
        )
        .await
        .map_err(CoreError::from)?;
        Ok(())
    }

    // ---- Groups ----

    async fn members_of(tx: &ScopedTx, groups: &[Uuid]) -> Result<HashMap<Uuid, Vec<(Uuid, String)>>, ScimError> {
        let rows = tx
            .query(
                "SELECT m.group_id, m.member_id, u.user_name FROM directory_group_members m
                   JOIN directory_users u ON u.tenant_id = m.tenant_id AND u.id = m.member_id
                  WHERE m.group_id = ANY ($1) ORDER BY u.created_at, u.id",
                &[(&groups.to_vec(), Type::UUID_ARRAY)],
            )
            .await
            .map_err(CoreError::from)?;
        let mut out: HashMap<Uuid, Vec<(Uuid, String)>> = HashMap::new();
        for r in rows {
            let g: Uuid = r.col("group_id").map_err(CoreError::from)?;
            out.entry(g)
                .or_default()
                .push((r.col("member_id").map_err(CoreError::from)?, r.col("user_name").map_err(CoreError::from)?));
        }
        Ok(out)
    }

    pub async fn list_groups(&self, ctx: &DirectoryCtx, q: &ListQuery) -> Result<Value, ScimError> {
        let f = parse_filter(q)?;
        let (start, count) = page_of(q)?;
        let proj = Projection::parse(q.attributes.as_deref(), q.excluded_attributes.as_deref());
        let tx = self.identity.inner.router.begin(&ctx.scope).await.map_err(CoreError::from)?;
        let rows = match f.as_ref().and_then(indexed).filter(|(sql, _)| !sql.contains("user_name")) {
            Some((sql, v)) => {
                tx.query(
                    &format!("SELECT {GROUP_COLS} FROM directory_groups WHERE directory_id = $1 AND {sql} ORDER BY created_at, id"),
                    &[(&ctx.directory, Type::UUID), (&v, Type::TEXT)],
                )
                .await
            }
            None => {
                tx.query(
                    &format!("SELECT {GROUP_COLS} FROM directory_groups WHERE directory_id = $1 ORDER BY created_at, id LIMIT {MAX_SCAN}"),
                    &[(&ctx.directory, Type::UUID)],
                )
                .await
            }
        }
        .map_err(CoreError::from)?;
        let ids: Vec<Uuid> = rows.iter().map(|r| r.col("id")).collect::<Result<_, _>>().map_err(CoreError::from)?;
        let members = Self::members_of(&tx, &ids).await?;
        tx.commit().await.map_err(CoreError::from)?;
        let mut all = Vec::new();
        for (r, id) in rows.iter().zip(&ids) {
            let v = render_group(ctx, r, members.get(id).map(Vec::as_slice).unwrap_or_default())?;
            if f.as_ref().is_none_or(|f| filter::matches(&v, f)) {
                all.push(v);
            }
        }
        let total = all.len();
        let page = all.into_iter().skip((start - 1) as usize).take(count as usize).map(|v| proj.apply(v)).collect();
        Ok(list_response(total, start, page))
    }

    pub async fn get_group(&self, ctx: &DirectoryCtx, id: &str, proj: &Projection) -> Result<Value, ScimError> {
        let id = Uuid::parse_str(id).map_err(|_| ScimError::new(404, None, "group not found"))?;
        let tx = self.identity.inner.router.begin(&ctx.scope).await.map_err(CoreError::from)?;
        let row = group_row(&tx, ctx, id, false).await?;
        let members = Self::members_of(&tx, &[id]).await?;
        tx.commit().await.map_err(CoreError::from)?;
        Ok(proj.apply(render_group(ctx, &row, members.get(&id).map(Vec::as_slice).unwrap_or_default())?))
    }

    pub async fn create_group(
        &self,
        ctx: &DirectoryCtx,
        body: &Value,
        client: &ClientInfo,
    ) -> Result<Value, ScimError> {
        let g = group_in(body)?;
        let now = self.identity.now();
        let tx = self.identity.inner.router.begin(&ctx.scope).await.map_err(CoreError::from)?;
        unique_group(&tx, ctx, &g, None).await?;
        let id = Uuid::now_v7();
        let row = tx
            .query_one(
                &format!(
                    "INSERT INTO directory_groups (tenant_id, project_id, directory_id, id, display_name, external_id,
                                                   resource, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) RETURNING {GROUP_COLS}"
                ),
                &[
                    (&ctx.scope.tenant_id, Type::UUID),
                    (&ctx.scope.project_id, Type::UUID),
                    (&ctx.directory, Type::UUID),
                    (&id, Type::UUID),
                    (&g.display_name, Type::TEXT),
                    (&g.external_id, Type::TEXT),
                    (&g.resource, Type::JSONB),
                    (&now, Type::TIMESTAMPTZ),
                ],
            )
            .await
            .map_err(CoreError::from)?;
        let (added, _) = self.set_members(&tx, ctx, id, &g.members).await?;
        self.sync_roles(&tx, ctx, &added, now).await?;
        let members = Self::members_of(&tx, &[id]).await?;
        let out = render_group(ctx, &row, members.get(&id).map(Vec::as_slice).unwrap_or_default())?;
        let event = audit::Event {
            action: crate::audit::AuditAction::DsyncGroupCreated,
            actor: actor(ctx),
            target: Some(("directory_group", id.to_string())),
            client,
            metadata: json!({"directory_id": ctx.directory, "display_name": g.display_name, "members_added": added.len()}),
        };
        audit::record_and_commit(tx, &ctx.scope, event, now).await?;
        Ok(out)
    }

    pub async fn replace_group(
        &self,
        ctx: &DirectoryCtx,
        id: &str,
        body: &Value,
        client: &ClientInfo,
    ) -> Result<Value, ScimError> {
        self.change_group(ctx, id, client, |_| Ok(body.clone())).await
    }

    pub async fn patch_group(
        &self,
        ctx: &DirectoryCtx,
        id: &str,
        body: &Value,
        client: &ClientInfo,
    ) -> Result<Value, ScimError> {
        self.change_group(ctx, id, client, |current| {
            let mut r = current.clone();
            apply_patch(&mut r, body)?;
            Ok(r)
        })
        .await
    }

    async fn change_group(
        &self,
        ctx: &DirectoryCtx,
        id: &str,
        client: &ClientInfo,
        change: impl FnOnce(&Value) -> Result<Value, ScimError>,
    ) -> Result<Value, ScimError> {
        let id = Uuid::parse_str(id).map_err(|_| ScimError::new(404, None, "group not found"))?;
        let now = self.identity.now();
        let tx = self.identity.inner.router.begin(&ctx.scope).await.map_err(CoreError::from)?;
        let current = group_row(&tx, ctx, id, true).await?;
        let members = Self::members_of(&tx, &[id]).await?;
        let mut view = render_group(ctx, &current, members.get(&id).map(Vec::as_slice).unwrap_or_default())?;
        if let Some(o) = view.as_object_mut() {
            o.remove("meta");
        }
        let g = group_in(&change(&view)?)?;
        unique_group(&tx, ctx, &g, Some(id)).await?;
        let row = tx
            .query_one(
                &format!(
                    "UPDATE directory_groups SET display_name = $2, external_id = $3, resource = $4,
                         version = version + 1, updated_at = $5 WHERE id = $1 RETURNING {GROUP_COLS}"
                ),
                &[
                    (&id, Type::UUID),
                    (&g.display_name, Type::TEXT),
                    (&g.external_id, Type::TEXT),
                    (&g.resource, Type::JSONB),
                    (&now, Type::TIMESTAMPTZ),
                ],
            )
            .await
            .map_err(CoreError::from)?;
        let (added, removed) = self.set_members(&tx, ctx, id, &g.members).await?;
        let renamed = current.col::<String>("display_name").map_err(CoreError::from)? != g.display_name;
        let affected: BTreeSet<Uuid> = if renamed {
            // A new name may map to another role: every member's role is looked at again.
            Self::members_of(&tx, &[id])
                .await?
                .remove(&id)
                .unwrap_or_default()
                .into_iter()
                .map(|(m, _)| m)
                .chain(removed.iter().copied())
                .collect()
        } else {
            added.union(&removed).copied().collect()
        };
        self.sync_roles(&tx, ctx, &affected, now).await?;
        let members = Self::members_of(&tx, &[id]).await?;
        let out = render_group(ctx, &row, members.get(&id).map(Vec::as_slice).unwrap_or_default())?;
        let event = audit::Event {
            action: crate::audit::AuditAction::DsyncGroupUpdated,
            actor: actor(ctx),
            target: Some(("directory_group", id.to_string())),
            client,
            metadata: json!({
                "directory_id": ctx.directory, "display_name": g.display_name,
                "members_added": added.len(), "members_removed": removed.len(),
            }),
        };
        audit::record_and_commit(tx, &ctx.scope, event, now).await?;
        Ok(out)
    }

    pub async fn delete_group(&self, ctx: &DirectoryCtx, id: &str, client: &ClientInfo) -> Result<(), ScimError> {
        let id = Uuid::parse_str(id).map_err(|_| ScimError::new(404, None, "group not found"))?;
        let now = self.identity.now();
        let tx = self.identity.inner.router.begin(&ctx.scope).await.map_err(CoreError::from)?;
        let members: BTreeSet<Uuid> =
            Self::members_of(&tx, &[id]).await?.remove(&id).unwrap_or_default().into_iter().map(|(m, _)| m).collect();
        let gone = tx
            .query_opt(
                "DELETE FROM directory_groups WHERE directory_id = $1 AND id = $2 RETURNING display_name",
                &[(&ctx.directory, Type::UUID), (&id, Type::UUID)],
            )
            .await
            .map_err(CoreError::from)?
            .ok_or_else(|| ScimError::new(404, None, "group not found"))?;
        self.sync_roles(&tx, ctx, &members, now).await?;
        let event = audit::Event {
            action: crate::audit::AuditAction::DsyncGroupDeleted,
            actor: actor(ctx),
            target: Some(("directory_group", id.to_string())),
            client,
            metadata: json!({
                "directory_id": ctx.directory,
                "display_name": gone.col::<String>("display_name").map_err(CoreError::from)?,
                "members_removed": members.len(),
            }),
        };
        audit::record_and_commit(tx, &ctx.scope, event, now).await?;
        Ok(())
    }

    /// Make the group's members exactly `wanted` (ids of this directory's users; others are
    /// not members of anything here and are left out). Returns (added, removed).
    async fn set_members(
        &self,
        tx: &ScopedTx,
        ctx: &DirectoryCtx,
        group: Uuid,
        wanted: &[String],
    ) -> Result<(BTreeSet<Uuid>, BTreeSet<Uuid>), ScimError> {
        let wanted: Vec<Uuid> = wanted.iter().filter_map(|w| Uuid::parse_str(w).ok()).collect();
        let known: BTreeSet<Uuid> = tx
            .query(
                "SELECT id FROM directory_users WHERE directory_id = $1 AND id = ANY ($2)",
                &[(&ctx.directory, Type::UUID), (&wanted, Type::UUID_ARRAY)],
            )
            .await
            .map_err(CoreError::from)?
            .iter()
            .map(|r| r.col("id"))
            .collect::<Result<_, _>>()
            .map_err(CoreError::from)?;
        let current: BTreeSet<Uuid> = tx
            .query("SELECT member_id FROM directory_group_members WHERE group_id = $1", &[(&group, Type::UUID)])
            .await
            .map_err(CoreError::from)?
            .iter()
            .map(|r| r.col("member_id"))
            .collect::<Result<_, _>>()
            .map_err(CoreError::from)?;
        let added: BTreeSet<Uuid> = known.difference(&current).copied().collect();
        let removed: BTreeSet<Uuid> = current.difference(&known).copied().collect();
        if !added.is_empty() {
            let list: Vec<Uuid> = added.iter().copied().collect();
            tx.query(
                "INSERT INTO directory_group_members (tenant_id, project_id, directory_id, group_id, member_id)
                 SELECT $1, $2, $3, $4, unnest($5::uuid[])",
                &[
                    (&ctx.scope.tenant_id, Type::UUID),
                    (&ctx.scope.project_id, Type::UUID),
                    (&ctx.directory, Type::UUID),
                    (&group, Type::UUID),
                    (&list, Type::UUID_ARRAY),
                ],
            )
            .await
            .map_err(CoreError::from)?;
        }
        if !removed.is_empty() {
            let list: Vec<Uuid> = removed.iter().copied().collect();
            tx.query(
                "DELETE FROM directory_group_members WHERE group_id = $1 AND member_id = ANY ($2)",
                &[(&group, Type::UUID), (&list, Type::UUID_ARRAY)],
            )
            .await
            .map_err(CoreError::from)?;
        }
        Ok((added, removed))
    }
}

/// A Group as written: (resource without id/meta/members, displayName, externalId, member ids).
struct GroupIn {
    resource: Value,
    display_name: String,
    external_id: Option<String>,
    members: Vec<String>,
}

/// The most members a group holds (its other lists stay at 1000).
const MAX_MEMBERS: usize = 100_000;

fn group_in(body: &Value) -> Result<GroupIn, ScimError> {
    // Members are checked apart: a group may be far larger than any other list.
    let mut rest = body.clone();
    let members_raw = rest.as_object_mut().and_then(|o| key_of(o, "members").cloned().and_then(|k| o.remove(&k)));
    check_value(&rest, 0)?;
    if let Some(Value::Array(m)) = &members_raw {
        if m.len() > MAX_MEMBERS {
            return Err(ScimError::invalid("members: at most 100000"));
        }
        m.iter().try_for_each(|x| check_value(x, 1))?;
    }
    let mut resource = body.clone();
    let obj = resource.as_object_mut().ok_or_else(|| ScimError::invalid("a Group is a JSON object"))?;
    for ro in ["id", "meta"] {
        if let Some(k) = key_of(obj, ro).cloned() {
            obj.remove(&k);
        }
    }
    let display_name =
        optional_string(obj, "displayName", 256)?.ok_or_else(|| ScimError::invalid("displayName is required"))?;
    let external_id = optional_string(obj, "externalId", 256)?;
    let members = match key_of(obj, "members").cloned().and_then(|k| obj.remove(&k)) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| {
                i.get("value")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .ok_or_else(|| ScimError::invalid("members: a list of {value}"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(ScimError::invalid("members: a list of {value}")),
    };
    obj.insert("schemas".into(), json!([GROUP_SCHEMA]));
    Ok(GroupIn { resource, display_name, external_id, members })
}

async fn unique_group(tx: &ScopedTx, ctx: &DirectoryCtx, g: &GroupIn, except: Option<Uuid>) -> Result<(), ScimError> {
    let clash = tx
        .query_opt(
            "SELECT 1 FROM directory_groups WHERE directory_id = $1 AND id IS DISTINCT FROM $2
                AND (lower(display_name) = lower($3) OR external_id = $4)",
            &[
                (&ctx.directory, Type::UUID),
                (&except, Type::UUID),
                (&g.display_name, Type::TEXT),
                (&g.external_id, Type::TEXT),
            ],
        )
        .await
        .map_err(CoreError::from)?;
    if clash.is_some() {
        return Err(ScimError::new(409, Some("uniqueness"), "a group with this displayName or externalId exists"));
    }
    Ok(())
}

async fn group_row(tx: &ScopedTx, ctx: &DirectoryCtx, id: Uuid, lock: bool) -> Result<authio_db::Row, ScimError> {
    let lock = if lock { " FOR UPDATE" } else { "" };
    tx.query_opt(
        &format!("SELECT {GROUP_COLS} FROM directory_groups WHERE directory_id = $1 AND id = $2{lock}"),
        &[(&ctx.directory, Type::UUID), (&id, Type::UUID)],
    )
    .await
    .map_err(CoreError::from)?
    .ok_or_else(|| ScimError::new(404, None, "group not found"))
}

/// The role a directory user (`user` and `dir`: the parameters holding the Authio user and the
/// directory) has: that of
/// their first group (oldest first) the directory's `group_roles` maps to an existing role of
/// the organization, else the project's default role. One expression, read where it is used.
fn role_of_user(user: &str, dir: &str) -> String {
    ROLE_OF_USER.replace("$USER", user).replace("$DIR", dir)
}

const ROLE_OF_USER: &str = "coalesce(
    (SELECT r.id FROM directory_users u
       JOIN directory_group_members gm ON gm.tenant_id = u.tenant_id AND gm.member_id = u.id
       JOIN directory_groups g ON g.tenant_id = gm.tenant_id AND g.id = gm.group_id
       JOIN directories d ON d.tenant_id = u.tenant_id AND d.id = u.directory_id
       JOIN roles r ON r.tenant_id = d.tenant_id AND r.slug = d.group_roles ->> g.display_name
                   AND (r.organization_id IS NULL OR r.organization_id = d.organization_id)
      WHERE u.directory_id = $DIR AND u.user_id = $USER
      ORDER BY g.created_at, g.id LIMIT 1),
    (SELECT r.id FROM roles r WHERE r.is_default))";

/// The project's default role (the same expression's fallback).
const DEFAULT_ROLE: &str = "(SELECT r.id FROM roles r WHERE r.is_default)";

async fn set_names(tx: &ScopedTx, user: Uuid, given: Option<&str>, family: Option<&str>) -> Result<(), ScimError> {
    if given.is_none() && family.is_none() {
        return Ok(());
    }
    tx.query(
        "UPDATE users SET given_name = coalesce($2, given_name), family_name = coalesce($3, family_name) WHERE id = $1",
        &[(&user, Type::UUID), (&given, Type::TEXT), (&family, Type::TEXT)],
    )
    .await
    .map_err(CoreError::from)?;
    Ok(())
}

/// End every live session of the user (their refresh tokens are refused with them).
async fn end_sessions(tx: &ScopedTx, user: Uuid, now: DateTime<Utc>) -> Result<usize, ScimError> {
    Ok(tx
        .query(
            "UPDATE sessions SET revoked_at = $2, revoked_reason = 'directory_deprovisioned'
              WHERE user_id = $1 AND revoked_at IS NULL RETURNING id",
            &[(&user, Type::UUID), (&now, Type::TIMESTAMPTZ)],
        )
        .await
        .map_err(CoreError::from)?
        .len())
}

/// ServiceProviderConfig (RFC 7643 5).
pub fn service_provider_config(base: &str) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://github.com/authio/authio/blob/main/docs/concepts/directory-sync.md",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": MAX_RESULTS},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": false},
        "authenticationSchemes": [{
            "type": "oauthbearertoken", "name": "Bearer token", "primary": true,
            "description": "The directory's token, shown once when it is made or rotated",
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")},
    })
}

pub fn resource_types(base: &str) -> Value {
    let user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "User", "name": "User", "endpoint": "/Users", "schema": USER_SCHEMA,
        "schemaExtensions": [{"schema": ENTERPRISE_SCHEMA, "required": false}],
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")},
    });
    let group = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
        "id": "Group", "name": "Group", "endpoint": "/Groups", "schema": GROUP_SCHEMA,
        "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group")},
    });
    list_response(2, 1, vec![user, group])
}

fn attr(name: &str, ty: &str, multi: bool, required: bool, extra: Value) -> Value {
    let mut a = json!({
        "name": name, "type": ty, "multiValued": multi, "required": required, "caseExact": false,
        "mutability": "readWrite", "returned": "default", "uniqueness": "none", "description": name,
    });
    if let (Some(o), Value::Object(e)) = (a.as_object_mut(), extra) {
        o.extend(e);
    }
    a
}

fn sub_attrs(names: &[(&str, &str)]) -> Value {
    Value::Array(names.iter().map(|(n, t)| attr(n, t, false, false, json!({}))).collect())
}

pub fn schemas(base: &str) -> Value {
    let multi = |n: &str| {
        attr(
            n,
            "complex",
            true,
            false,
            json!({"subAttributes": sub_attrs(&[("value", "string"), ("display", "string"), ("type", "string"), ("primary", "boolean")])}),
        )
    };
    let user = json!({
        "id": USER_SCHEMA, "name": "User", "description": "User Account",
        "attributes": [
            attr("userName", "string", false, true, json!({"uniqueness": "server"})),
            attr("name", "complex", false, false, json!({"subAttributes": sub_attrs(&[("formatted", "string"), ("familyName", "string"), ("givenName", "string"), ("middleName", "string"), ("honorificPrefix", "string"), ("honorificSuffix", "string")])})),
            attr("displayName", "string", false, false, json!({})),
            attr("nickName", "string", false, false, json!({})),
            attr("title", "string", false, false, json!({})),
            attr("userType", "string", false, false, json!({})),
            attr("preferredLanguage", "string", false, false, json!({})),
            attr("locale", "string", false, false, json!({})),
            attr("timezone", "string", false, false, json!({})),
            attr("active", "boolean", false, false, json!({})),
            multi("emails"),
            multi("phoneNumbers"),
            attr("groups", "complex", true, false, json!({"mutability": "readOnly", "subAttributes": sub_attrs(&[("value", "string"), ("display", "string")])})),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{USER_SCHEMA}")},
    });
    let enterprise = json!({
        "id": ENTERPRISE_SCHEMA, "name": "EnterpriseUser", "description": "Enterprise User",
        "attributes": [
            attr("employeeNumber", "string", false, false, json!({})),
            attr("costCenter", "string", false, false, json!({})),
            attr("organization", "string", false, false, json!({})),
            attr("division", "string", false, false, json!({})),
            attr("department", "string", false, false, json!({})),
            attr("manager", "complex", false, false, json!({"subAttributes": sub_attrs(&[("value", "string"), ("displayName", "string")])})),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{ENTERPRISE_SCHEMA}")},
    });
    let group = json!({
        "id": GROUP_SCHEMA, "name": "Group", "description": "Group",
        "attributes": [
            attr("displayName", "string", false, true, json!({})),
            attr("members", "complex", true, false, json!({"subAttributes": [
                attr("value", "string", false, false, json!({"mutability": "immutable", "caseExact": true})),
                attr("$ref", "reference", false, false, json!({"mutability": "immutable", "referenceTypes": ["User", "Group"]})),
                attr("type", "string", false, false, json!({"mutability": "immutable", "canonicalValues": ["User", "Group"]})),
            ]})),
        ],
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{GROUP_SCHEMA}")},
    });
    let mut list = list_response(3, 1, vec![user, enterprise, group]);
    if let Some(items) = list.get_mut("Resources").and_then(Value::as_array_mut) {
        for s in items.iter_mut() {
            s["schemas"] = json!(["urn:ietf:params:scim:schemas:core:2.0:Schema"]);
        }
    }
    list
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn patch(r: &mut Value, ops: Value) {
        apply_patch(r, &json!({"schemas": [PATCH_SCHEMA], "Operations": ops})).unwrap();
    }

    #[test]
    fn okta_and_entra_patches() {
        let mut u = json!({"userName": "a@x.test", "active": true, "emails": [{"value": "a@x.test", "type": "work", "primary": true}],
                           "name": {"givenName": "A"}});
        // Okta: replace without a path.
        patch(&mut u, json!([{"op": "replace", "value": {"active": false}}]));
        assert_eq!(u["active"], json!(false));
        // Entra ID: capitalized names, string booleans, value paths, dotted names in a value.
        patch(
            &mut u,
            json!([
                {"op": "Replace", "path": "active", "value": "True"},
                {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "b@x.test"},
                {"op": "Add", "path": "emails[type eq \"home\"].value", "value": "h@x.test"},
                {"op": "Replace", "path": "name.familyName", "value": "Z"},
                {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "R&D"},
                {"op": "Replace", "value": {"name.givenName": "B"}},
            ]),
        );
        assert_eq!(u["active"], json!(true));
        assert_eq!(u["emails"][0]["value"], "b@x.test");
        assert_eq!(u["emails"][1], json!({"type": "home", "value": "h@x.test"}));
        assert_eq!(u["name"], json!({"givenName": "B", "familyName": "Z"}));
        assert_eq!(u[ENTERPRISE_SCHEMA]["department"], "R&D");
        patch(&mut u, json!([{"op": "remove", "path": "emails[type eq \"home\"]"}]));
        assert_eq!(u["emails"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn group_member_patches() {
        let mut g = json!({"displayName": "Eng", "members": [{"value": "1"}, {"value": "2"}]});
        patch(&mut g, json!([{"op": "add", "path": "members", "value": [{"value": "2"}, {"value": "3"}]}]));
        assert_eq!(g["members"].as_array().unwrap().len(), 3);
        patch(&mut g, json!([{"op": "remove", "path": "members[value eq \"1\"]"}]));
        patch(&mut g, json!([{"op": "Remove", "path": "members", "value": [{"value": "3"}]}]));
        assert_eq!(g["members"], json!([{"value": "2"}]));
        patch(&mut g, json!([{"op": "replace", "path": "displayName", "value": "Engineering"}]));
        assert_eq!(g["displayName"], "Engineering");
        let bad = apply_patch(&mut g, &json!({"Operations": [{"op": "move", "path": "x"}]}));
        assert_eq!(bad.unwrap_err().status, 400);
    }

    #[test]
    fn projections_keep_id_and_schemas() {
        let r = json!({"id": "1", "schemas": ["s"], "userName": "a", "name": {"givenName": "A", "familyName": "B"}, "emails": []});
        let only = Projection::parse(Some("userName,name.givenName"), None).apply(r.clone());
        assert_eq!(
            only.as_object().unwrap().keys().cloned().collect::<Vec<_>>(),
            vec!["id", "name", "schemas", "userName"]
        );
        let without = Projection::parse(None, Some("emails,name.familyName,id")).apply(r);
        assert_eq!(without["name"], json!({"givenName": "A"}));
        assert!(without.get("emails").is_none() && without.get("id").is_some());
    }
}
