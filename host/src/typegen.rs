//! `vista plugin types`: a TypeScript module for a plugin's views.
//!
//! A client written against a Vista host needs the stack definition the
//! published TypeScript client (`hyperstack-typescript`) connects with, and
//! types for what each view holds. Written by hand, both drift from the
//! plugin: a view renamed, a field added. So they are generated from the
//! plugin file itself: the manifest names every view (the three base views
//! of each entity and the derived ones), and each entity may carry the JSON
//! Schema of its shape ([`vista_plugin_api::Manifest::entity_schema`]).
//!
//! The module holds, in order: an interface per entity (and a named type
//! per `$defs` entry of its schema), every entity with the `_seq: string`
//! the host stamps; optionally (`--zod`) a zod schema per entity that
//! `HyperStack.connect(stack, { validateFrames: true })` checks frames with
//! (the client looks schemas up by the first segment of the view id, so a
//! derived group such as `ActiveGame` maps to its source entity's schema);
//! a `StackViews` type (a type alias, not an interface: only aliases are
//! assignable to the client's `Record<string, ViewGroup>`); and
//! `createStack(url)`, plus `stack` built with the `--url` given (or
//! `DEFAULT_URL`).
//!
//! Choices that follow from the protocol rather than from taste:
//! - An append view is read through a list-mode definition, as the client
//!   knows only `state` and `list` (see `tests/ts-client/tokens.mjs`).
//! - A JSON Schema `integer` is `number | string` unless its bounds (or
//!   format) keep it within +-(2^53-1): the host sends integers beyond that
//!   as decimal strings (docs/PROTOCOL.md, "Safe integers").
//! - The client's `ViewGroup` type has only `state` and `list` keys, and
//!   TypeScript refuses an object sharing no property with it, so a group of
//!   derived views only (`ActiveGame`) gets a `list?: never` member.
//! - An entity without a schema is `{ _seq: string; [field: string]: unknown }`
//!   and gets no zod schema (nothing to check).
//!
//! The JSON Schema subset understood is what `schemars` writes: `type`
//! (single or a list), `properties`/`required`, `additionalProperties`,
//! `items`/`prefixItems`, `enum`, `const`, `anyOf`/`oneOf`/`allOf`, and
//! `$ref` into `$defs` (or `definitions`). Anything else becomes `unknown`,
//! never a wrong type.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::path::Path;

use serde_json::{Map, Value};
use vista_plugin_api::Manifest;

use crate::ids::{Mode, ViewId};

/// What to generate.
#[derive(Debug, Clone, Default)]
pub struct TsOptions {
    /// The WebSocket URL `stack` connects to; `DEFAULT_URL` when absent.
    pub url: Option<String>,
    /// Also emit zod schemas and the stack's `schemas`.
    pub zod: bool,
}

/// The URL used when `--url` is not given (the host's default listen address).
pub const DEFAULT_URL: &str = "ws://127.0.0.1:8877";

/// Names the generated module defines itself; an entity or `$defs` type of
/// the same name is renamed.
const RESERVED: &[&str] = &["StackViews", "ViewDef", "DEFAULT_URL", "z"];

/// Loads `file` the way the host does (checked in a child process first
/// when a checker is set, see [`crate::set_checker`]) and returns the
/// module for its manifest, or the reason it is not a loadable plugin.
pub fn plugin_types(file: &Path, options: &TsOptions) -> Result<String, String> {
    let cache = std::env::temp_dir().join("vista-plugin-cache");
    let library = crate::plugins::load(file, &cache).map_err(|e| e.to_string())?;
    Ok(typescript(&library.manifest, options))
}

/// The TypeScript module for `manifest`.
pub fn typescript(manifest: &Manifest, options: &TsOptions) -> String {
    let mut names = Names::default();
    // Entity interface names first: they are what users type.
    let entity_names: Vec<String> = manifest
        .entities
        .iter()
        .map(|e| names.claim(&ident(&e.name), None))
        .collect();
    // Then each schema's $defs, shared when two entities define the same
    // type identically, renamed `EntityName` when they differ.
    let mut refs: Vec<HashMap<String, String>> = Vec::new();
    let mut defs: Vec<(String, Value, usize)> = Vec::new();
    for (i, entity) in manifest.entities.iter().enumerate() {
        let mut map = HashMap::new();
        for (key, def) in definitions(entity.schema.as_ref()) {
            let wanted = ident(key);
            let name = match names.owner(&wanted) {
                Some(existing) if existing == def => wanted,
                Some(_) => names.claim(&format!("{}{wanted}", entity_names[i]), Some(def)),
                None => names.claim(&wanted, Some(def)),
            };
            if !defs.iter().any(|(n, _, _)| *n == name) {
                defs.push((name.clone(), def.clone(), i));
            }
            map.insert(key.clone(), name);
        }
        refs.push(map);
    }
    let ctx = |i: usize| Ctx {
        refs: &refs[i],
        root: &entity_names[i],
    };

    let mut out = String::new();
    let _ = writeln!(
        out,
        "// Generated by `vista plugin types` from plugin {} {}: its entities and views.\n\
         // Do not edit; regenerate when the plugin's manifest changes.\n",
        manifest.name, manifest.version
    );
    out.push_str("import type { ViewDef } from 'hyperstack-typescript';\n");
    if options.zod {
        out.push_str("import { z } from 'zod';\n");
    }
    let url = options.url.as_deref().unwrap_or(DEFAULT_URL);
    let _ = writeln!(
        out,
        "\n/** The host `stack` connects to. */\nexport const DEFAULT_URL = {};\n",
        json_str(url)
    );

    // Entity types.
    for (i, entity) in manifest.entities.iter().enumerate() {
        let name = &entity_names[i];
        let _ = writeln!(
            out,
            "/** Entity `{}` (views `{0}/list`, `{0}/state`, `{0}/append`). */",
            entity.name
        );
        match entity.schema.as_ref() {
            Some(schema) if is_object_schema(schema) => {
                let body = object_body(schema, &ctx(i), 0, true);
                let _ = writeln!(out, "export interface {name} {body}\n");
            }
            Some(schema) => {
                let ty = ts_type(schema, &ctx(i), 0);
                let _ = writeln!(out, "export type {name} = ({ty}) & {{ _seq: string }};\n");
            }
            None => {
                let _ = writeln!(
                    out,
                    "export interface {name} {{\n  /** Stamped by the host on every change. */\n  _seq: string;\n  \
                     /** The plugin declares no schema for this entity. */\n  [field: string]: unknown;\n}}\n"
                );
            }
        }
    }
    for (name, def, i) in &defs {
        doc(&mut out, def, "");
        if is_object_schema(def) {
            let _ = writeln!(
                out,
                "export interface {name} {}\n",
                object_body(def, &ctx(*i), 0, false)
            );
        } else {
            let _ = writeln!(out, "export type {name} = {};\n", ts_type(def, &ctx(*i), 0));
        }
    }

    // Zod schemas.
    let mut schema_of: HashMap<&str, String> = HashMap::new();
    if options.zod {
        for (i, entity) in manifest.entities.iter().enumerate() {
            let Some(schema) = entity.schema.as_ref() else {
                continue;
            };
            let name = &entity_names[i];
            let expr = if is_object_schema(schema) {
                zod_object(schema, &ctx(i), true)
            } else {
                format!(
                    "z.intersection({}, z.object({{ _seq: z.string() }}))",
                    zod_type(schema, &ctx(i))
                )
            };
            let _ = writeln!(
                out,
                "/** Checks a `{name}` as the client stores it. */\nexport const {name}Schema: z.ZodType<{name}> = z.lazy(() => {expr});\n"
            );
            schema_of.insert(entity.name.as_str(), format!("{name}Schema"));
        }
        for (name, def, i) in &defs {
            let _ = writeln!(
                out,
                "export const {name}Schema: z.ZodType<{name}> = z.lazy(() => {});\n",
                zod_type(def, &ctx(*i))
            );
        }
    }

    // Views, grouped by the first segment of their id.
    let mut groups: Vec<(String, Vec<GroupView>)> = Vec::new();
    let mut group = |prefix: &str, key: &str, id: &str, mode: &'static str, entity: usize| {
        let at = match groups.iter().position(|(p, _)| p == prefix) {
            Some(at) => at,
            None => {
                groups.push((prefix.to_owned(), Vec::new()));
                groups.len() - 1
            }
        };
        groups[at]
            .1
            .push((key.to_owned(), id.to_owned(), mode, entity));
    };
    for (i, entity) in manifest.entities.iter().enumerate() {
        for (id, mode) in ViewId::bases(&entity.name) {
            // The client knows list and state views; append streams as a list.
            let client_mode = if mode == Mode::State { "state" } else { "list" };
            group(&entity.name, mode.as_str(), &id, client_mode, i);
        }
    }
    for view in &manifest.views {
        let (prefix, suffix) = view.id.split_once('/').unwrap_or((&view.id, ""));
        let Some(i) = manifest.entities.iter().position(|e| e.name == view.source) else {
            continue;
        };
        // A derived view is a list; the client types the key `state` as a
        // state view, so a derived `X/state` is offered as `stateList`.
        let key = if suffix == "state" {
            "stateList"
        } else {
            suffix
        };
        group(prefix, key, &view.id, "list", i);
    }
    out.push_str(
        "/** Every view of the plugin: `hs.views.Group.key`, as `HyperStack.connect` types them. */\n\
         export type StackViews = {\n",
    );
    for (prefix, views) in &groups {
        let _ = writeln!(out, "  {}: {{", prop(prefix));
        for (key, id, mode, i) in views {
            let _ = writeln!(
                out,
                "    /** `{id}` */\n    {}: ViewDef<{}, '{mode}'>;",
                prop(key),
                entity_names[*i]
            );
        }
        if !views.iter().any(|(k, ..)| k == "list" || k == "state") {
            out.push_str(
                "    /** Never set: lets the client's `ViewGroup` type accept a group of derived views only. */\n    list?: never;\n",
            );
        }
        out.push_str("  };\n");
    }
    out.push_str("};\n\n");

    if options.zod {
        out.push_str(
            "/** Zod schemas by view group, for `HyperStack.connect(stack, { validateFrames: true })`. */\nexport const schemas = {\n",
        );
        for (prefix, views) in &groups {
            if let Some(schema) = views
                .first()
                .and_then(|(_, _, _, i)| schema_of.get(manifest.entities[*i].name.as_str()))
            {
                let _ = writeln!(out, "  {}: {schema},", prop(prefix));
            }
        }
        out.push_str("};\n\n");
    }

    let _ = writeln!(
        out,
        "/** The stack definition for `HyperStack.connect`, connecting to `url`. */\n\
         export function createStack(url: string = DEFAULT_URL) {{\n  const views: StackViews = {{"
    );
    for (prefix, views) in &groups {
        let _ = writeln!(out, "    {}: {{", prop(prefix));
        for (key, id, mode, _) in views {
            let _ = writeln!(
                out,
                "      {}: {{ mode: '{mode}', view: {} }},",
                prop(key),
                json_str(id)
            );
        }
        out.push_str("    },\n");
    }
    let _ = writeln!(
        out,
        "  }};\n  return {{ name: {}, url, views{} }};\n}}\n",
        json_str(&manifest.name),
        if options.zod { ", schemas" } else { "" }
    );
    out.push_str(
        "/** The stack at `DEFAULT_URL`. */\nexport const stack = createStack();\n\n\
         /** The type of a stack built by `createStack`. */\nexport type Stack = ReturnType<typeof createStack>;\n",
    );
    out
}

/// One view of a group: key in the group, view id, client mode, index of
/// the source entity.
type GroupView = (String, String, &'static str, usize);

/// Type names in use, with the schema each stands for.
#[derive(Default)]
struct Names {
    taken: BTreeMap<String, Option<Value>>,
}

impl Names {
    /// `wanted`, or `wanted2`, `wanted3`... when taken or reserved.
    fn claim(&mut self, wanted: &str, schema: Option<&Value>) -> String {
        let mut name = wanted.to_owned();
        let mut n = 1;
        while self.taken.contains_key(&name) || RESERVED.contains(&name.as_str()) {
            n += 1;
            name = format!("{wanted}{n}");
        }
        self.taken.insert(name.clone(), schema.cloned());
        name
    }

    /// The schema a `$defs` name already stands for.
    fn owner(&self, name: &str) -> Option<&Value> {
        self.taken.get(name).and_then(Option::as_ref)
    }
}

/// Resolves `$ref`s of one entity's schema.
struct Ctx<'a> {
    refs: &'a HashMap<String, String>,
    root: &'a str,
}

impl Ctx<'_> {
    fn reference(&self, reference: &str) -> Option<String> {
        if reference == "#" {
            return Some(self.root.to_owned());
        }
        let name = reference
            .strip_prefix("#/$defs/")
            .or_else(|| reference.strip_prefix("#/definitions/"))?;
        self.refs.get(name).cloned()
    }
}

fn definitions(schema: Option<&Value>) -> impl Iterator<Item = (&String, &Value)> {
    let defs = schema.and_then(|s| s.get("$defs").or_else(|| s.get("definitions")));
    defs.and_then(Value::as_object).into_iter().flatten()
}

/// An object schema with properties: written as an interface.
fn is_object_schema(schema: &Value) -> bool {
    types(schema) == ["object"] && schema.get("properties").is_some()
}

fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ if schema.get("properties").is_some() => vec!["object"],
        _ => Vec::new(),
    }
}

/// A TypeScript identifier for a name (invalid characters become `_`).
fn ident(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '$' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with(|c: char| c.is_ascii_digit()) {
        out.insert(0, '_');
    }
    out
}

/// A property key: bare when it is an identifier, quoted otherwise.
fn prop(name: &str) -> String {
    if !name.is_empty() && ident(name) == name {
        name.to_owned()
    } else {
        json_str(name)
    }
}

fn json_str(text: &str) -> String {
    Value::String(text.to_owned()).to_string()
}

/// A `/** description */` line for a schema, at `indent`.
fn doc(out: &mut String, schema: &Value, indent: &str) {
    if let Some(text) = schema.get("description").and_then(Value::as_str) {
        let text = text.replace("*/", "*\\/");
        let _ = writeln!(
            out,
            "{indent}/** {} */",
            text.trim().replace('\n', &format!("\n{indent} * "))
        );
    }
}

/// Whether integers of this schema always arrive as numbers.
fn safe_integer(schema: &Value) -> bool {
    const MAX: f64 = 9_007_199_254_740_991.0;
    let narrow = matches!(
        schema.get("format").and_then(Value::as_str),
        Some("int8" | "int16" | "int32" | "uint8" | "uint16" | "uint32")
    );
    let bounded = |key: &str| schema.get(key).and_then(Value::as_f64);
    narrow
        || matches!((bounded("minimum"), bounded("maximum")), (Some(lo), Some(hi)) if lo >= -MAX && hi <= MAX)
}

fn object_body(schema: &Value, ctx: &Ctx<'_>, depth: usize, seq: bool) -> String {
    let indent = "  ".repeat(depth + 1);
    let mut out = String::from("{\n");
    let required = required(schema);
    if seq {
        let _ = writeln!(
            out,
            "{indent}/** Stamped by the host on every change. */\n{indent}_seq: string;"
        );
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            doc(&mut out, sub, &indent);
            let optional = if required.contains(&key.as_str()) {
                ""
            } else {
                "?"
            };
            let _ = writeln!(
                out,
                "{indent}{}{optional}: {};",
                prop(key),
                ts_type(sub, ctx, depth + 1)
            );
        }
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(false)) | None => {}
        Some(extra) => {
            let _ = writeln!(
                out,
                "{indent}[field: string]: {};",
                index_type(extra, ctx, depth + 1)
            );
        }
    }
    out.push_str(&"  ".repeat(depth));
    out.push('}');
    out
}

/// The index signature type: the declared properties must fit it too.
fn index_type(extra: &Value, ctx: &Ctx<'_>, depth: usize) -> String {
    match extra {
        Value::Bool(true) => "unknown".into(),
        other => format!("{} | undefined", ts_type(other, ctx, depth)),
    }
}

fn required(schema: &Value) -> Vec<&str> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

fn union(parts: Vec<String>) -> String {
    let mut parts = parts;
    parts.dedup();
    match parts.len() {
        0 => "never".into(),
        1 => parts.remove(0),
        _ => parts
            .into_iter()
            .map(|p| {
                if p.contains(" | ") || p.contains(" & ") {
                    format!("({p})")
                } else {
                    p
                }
            })
            .collect::<Vec<_>>()
            .join(" | "),
    }
}

fn ts_type(schema: &Value, ctx: &Ctx<'_>, depth: usize) -> String {
    let schema = match schema {
        Value::Bool(true) => return "unknown".into(),
        Value::Bool(false) => return "never".into(),
        Value::Object(map) => map,
        _ => return "unknown".into(),
    };
    let value = Value::Object(schema.clone());
    if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
        return ctx.reference(reference).unwrap_or_else(|| "unknown".into());
    }
    if let Some(constant) = schema.get("const") {
        return literal(constant);
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        return union(values.iter().map(literal).collect());
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(parts) = schema.get(key).and_then(Value::as_array) {
            return union(parts.iter().map(|p| ts_type(p, ctx, depth)).collect());
        }
    }
    if let Some(parts) = schema.get("allOf").and_then(Value::as_array) {
        let parts: Vec<String> = parts
            .iter()
            .map(|p| format!("({})", ts_type(p, ctx, depth)))
            .collect();
        return if parts.is_empty() {
            "unknown".into()
        } else {
            parts.join(" & ")
        };
    }
    let types = types(&value);
    if types.is_empty() {
        return "unknown".into();
    }
    union(
        types
            .into_iter()
            .map(|t| match t {
                "string" => "string".into(),
                "number" => "number".into(),
                "integer" if safe_integer(&value) => "number".into(),
                "integer" => "number | string".into(),
                "boolean" => "boolean".into(),
                "null" => "null".into(),
                "array" => array_type(schema, ctx, depth),
                "object" => object_type(&value, ctx, depth),
                _ => "unknown".into(),
            })
            .collect(),
    )
}

fn array_type(schema: &Map<String, Value>, ctx: &Ctx<'_>, depth: usize) -> String {
    if let Some(prefix) = schema.get("prefixItems").and_then(Value::as_array) {
        let items: Vec<String> = prefix.iter().map(|p| ts_type(p, ctx, depth)).collect();
        return format!("[{}]", items.join(", "));
    }
    match schema.get("items") {
        Some(items) => format!("Array<{}>", ts_type(items, ctx, depth)),
        None => "unknown[]".into(),
    }
}

fn object_type(schema: &Value, ctx: &Ctx<'_>, depth: usize) -> String {
    if schema.get("properties").is_some() {
        return object_body(schema, ctx, depth, false);
    }
    match schema.get("additionalProperties") {
        Some(Value::Bool(false)) => "Record<string, never>".into(),
        Some(Value::Bool(true)) | None => "Record<string, unknown>".into(),
        Some(extra) => format!("Record<string, {}>", ts_type(extra, ctx, depth)),
    }
}

/// A JSON value as a TypeScript literal type (or zod literal argument).
fn literal(value: &Value) -> String {
    value.to_string()
}

fn zod_union(mut parts: Vec<String>) -> String {
    parts.dedup();
    match parts.len() {
        0 => "z.never()".into(),
        1 => parts.remove(0),
        _ => format!("z.union([{}])", parts.join(", ")),
    }
}

fn zod_literal(value: &Value) -> String {
    match value {
        Value::Null => "z.null()".into(),
        Value::Bool(_) | Value::Number(_) | Value::String(_) => format!("z.literal({value})"),
        _ => "z.unknown()".into(),
    }
}

fn zod_type(schema: &Value, ctx: &Ctx<'_>) -> String {
    let map = match schema {
        Value::Bool(true) => return "z.unknown()".into(),
        Value::Bool(false) => return "z.never()".into(),
        Value::Object(map) => map,
        _ => return "z.unknown()".into(),
    };
    if let Some(reference) = map.get("$ref").and_then(Value::as_str) {
        return ctx
            .reference(reference)
            .map(|name| format!("{name}Schema"))
            .unwrap_or_else(|| "z.unknown()".into());
    }
    if let Some(constant) = map.get("const") {
        return zod_literal(constant);
    }
    if let Some(values) = map.get("enum").and_then(Value::as_array) {
        if !values.is_empty() && values.iter().all(Value::is_string) {
            let items: Vec<String> = values.iter().map(Value::to_string).collect();
            return format!("z.enum([{}])", items.join(", "));
        }
        return zod_union(values.iter().map(zod_literal).collect());
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(parts) = map.get(key).and_then(Value::as_array) {
            return zod_union(parts.iter().map(|p| zod_type(p, ctx)).collect());
        }
    }
    if let Some(parts) = map.get("allOf").and_then(Value::as_array) {
        return parts
            .iter()
            .map(|p| zod_type(p, ctx))
            .reduce(|a, b| format!("z.intersection({a}, {b})"))
            .unwrap_or_else(|| "z.unknown()".into());
    }
    let types = types(schema);
    if types.is_empty() {
        return "z.unknown()".into();
    }
    zod_union(
        types
            .into_iter()
            .map(|t| match t {
                "string" => "z.string()".into(),
                "number" => "z.number()".into(),
                "integer" if safe_integer(schema) => "z.number().int()".into(),
                "integer" => "z.union([z.number().int(), z.string().regex(/^-?[0-9]+$/)])".into(),
                "boolean" => "z.boolean()".into(),
                "null" => "z.null()".into(),
                "array" => {
                    if let Some(prefix) = map.get("prefixItems").and_then(Value::as_array) {
                        let items: Vec<String> = prefix.iter().map(|p| zod_type(p, ctx)).collect();
                        format!("z.tuple([{}])", items.join(", "))
                    } else {
                        let items = map.get("items").map(|i| zod_type(i, ctx));
                        format!("z.array({})", items.unwrap_or_else(|| "z.unknown()".into()))
                    }
                }
                "object" => zod_object(schema, ctx, false),
                _ => "z.unknown()".into(),
            })
            .collect(),
    )
}

fn zod_object(schema: &Value, ctx: &Ctx<'_>, seq: bool) -> String {
    let required = required(schema);
    let mut fields: Vec<String> = Vec::new();
    if seq {
        fields.push("_seq: z.string()".into());
    }
    if let Some(props) = schema.get("properties").and_then(Value::as_object) {
        for (key, sub) in props {
            let optional = if required.contains(&key.as_str()) {
                ""
            } else {
                ".optional()"
            };
            fields.push(format!("{}: {}{optional}", prop(key), zod_type(sub, ctx)));
        }
    }
    let extra = schema.get("additionalProperties");
    if fields.is_empty() && !seq {
        return match extra {
            Some(Value::Bool(false)) => "z.object({}).strict()".into(),
            Some(Value::Bool(true)) | None => "z.record(z.string(), z.unknown())".into(),
            Some(extra) => format!("z.record(z.string(), {})", zod_type(extra, ctx)),
        };
    }
    let object = format!("z.object({{ {} }})", fields.join(", "));
    match extra {
        Some(Value::Bool(false)) | None => object,
        Some(Value::Bool(true)) => format!("{object}.passthrough()"),
        Some(extra) => format!("{object}.catchall({})", zod_type(extra, ctx)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vista_plugin_api::view::{eq, view};

    #[test]
    fn integers_are_numbers_only_when_bounded_within_the_safe_range() {
        let ctx = Ctx {
            refs: &HashMap::new(),
            root: "X",
        };
        let ty = |s: Value| ts_type(&s, &ctx, 0);
        assert_eq!(
            ty(serde_json::json!({"type": "integer", "format": "uint8"})),
            "number"
        );
        assert_eq!(
            ty(serde_json::json!({"type": "integer", "format": "int64"})),
            "number | string"
        );
        assert_eq!(
            ty(serde_json::json!({"type": ["integer", "null"], "minimum": 0, "maximum": 100})),
            "number | null"
        );
        assert_eq!(ty(serde_json::json!({"enum": ["a", "b"]})), r#""a" | "b""#);
        assert_eq!(ty(serde_json::json!({"$ref": "#/$defs/Nope"})), "unknown");
    }

    #[test]
    fn a_derived_only_group_and_a_schemaless_entity() {
        let manifest = Manifest::new("p", "1")
            .entity("Item")
            .view(view("Hot/now").from("Item").filter(eq("hot", true)));
        let module = typescript(&manifest, &TsOptions::default());
        assert!(module.contains("[field: string]: unknown;"), "{module}");
        assert!(
            module
                .contains("Hot: {\n    /** `Hot/now` */\n    now: ViewDef<Item, 'list'>;\n    /**"),
            "{module}"
        );
        assert!(module.contains("list?: never;"), "{module}");
        assert!(
            module.contains("append: { mode: 'list', view: \"Item/append\" }"),
            "{module}"
        );
        assert!(
            module.contains("export const DEFAULT_URL = \"ws://127.0.0.1:8877\";"),
            "{module}"
        );
        assert!(!module.contains("zod"), "{module}");
    }
}
