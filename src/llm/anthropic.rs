//! Translation between OpenAI chat completions and Anthropic Messages: requests,
//! non-stream answers, error answers and event streams, in both directions.
//!
//! Everything here is pure: bytes in, bytes out, no I/O. Input comes from clients
//! and providers, so nothing panics on it: a body that cannot be translated is an
//! `Err` (requests, with a client-facing message) or `None` (answers), and a stream
//! event that is not JSON makes the stream translator return `false`.
//!
//! What one format has and the other cannot carry is dropped; for requests the
//! dropped fields (top-level names, or content block / part types, as the source
//! format spells them) are reported in [`Translated::dropped`] so weir can log or
//! reject them. Hints with no effect on the answer (`cache_control`,
//! `stream_options`) are dropped silently.

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Map, Value};
use std::time::{SystemTime, UNIX_EPOCH};

/// A request translated to the other format, and the names of the fields it had that the
/// other format cannot carry (as the source format spells them: top-level field names such
/// as "top_k" or "logit_bias", or block/part types such as "thinking"), deduplicated, in
/// first-seen order. Empty when nothing was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Translated {
    pub body: Bytes,
    pub dropped: Vec<String>,
}

// ---------------------------------------------------------------------------
// Small shared helpers
// ---------------------------------------------------------------------------

/// The names of dropped fields, deduplicated, in first-seen order.
#[derive(Default)]
struct Dropped(Vec<String>);

impl Dropped {
    /// Records `name` unless it was recorded already ("unknown" for a block without a type).
    fn add(&mut self, name: &str) {
        let name = if name.is_empty() { "unknown" } else { name };
        if !self.0.iter().any(|n| n == name) {
            self.0.push(name.to_string());
        }
    }
}

/// Parses a request body that must be a JSON object.
fn parse_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("body: must be a JSON object".to_string()),
        Err(e) => Err(format!("body: invalid JSON: {e}")),
    }
}

/// Parses an answer or event body that must be a JSON object; `None` otherwise.
fn parse_object_opt(body: &[u8]) -> Option<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Some(map),
        _ => None,
    }
}

/// Serializes a JSON value. Serializing a `Value` cannot fail (its keys are strings).
fn to_bytes(value: &Value) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// The `type` of a block or part, "" when it has none.
fn type_of(block: &Value) -> &str {
    block.get("type").and_then(Value::as_str).unwrap_or("")
}

/// A string field, "" when absent or not a string.
fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

/// A token count: a non-negative integer, 0 when absent or of another kind.
fn count(value: Option<&Value>) -> u64 {
    value.and_then(Value::as_u64).unwrap_or(0)
}

/// Seconds since the Unix epoch, for OpenAI's `created` (0 if the clock is before 1970).
fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The text of a content that is a string or an array of text blocks/parts, the texts
/// joined with `sep`. Non-text blocks are reported by type. `None` for other kinds.
fn joined_text(content: &Value, sep: &str, dropped: &mut Dropped) -> Option<String> {
    match content {
        Value::String(s) => Some(s.clone()),
        Value::Null => Some(String::new()),
        Value::Array(items) => {
            let mut texts = Vec::new();
            for item in items {
                match item {
                    Value::String(s) => texts.push(s.as_str()),
                    _ if type_of(item) == "text" => texts.push(str_field(item, "text")),
                    _ => dropped.add(type_of(item)),
                }
            }
            Some(texts.join(sep))
        }
        _ => None,
    }
}

/// OpenAI's usage object from Anthropic's counts. Anthropic's `input_tokens` excludes
/// cache reads and writes, so the prompt is the sum of the three; the cache counts
/// are also kept under Anthropic's names (weir's usage reader prefers `prompt_tokens`).
fn openai_usage(input: u64, output: u64, cache_read: u64, cache_creation: u64) -> Value {
    let prompt = input.saturating_add(cache_read).saturating_add(cache_creation);
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": output,
        "total_tokens": prompt.saturating_add(output),
        "prompt_tokens_details": {"cached_tokens": cache_read},
        "cache_read_input_tokens": cache_read,
        "cache_creation_input_tokens": cache_creation,
    })
}

/// Serializes a request object with `model` first (when it has one), then the other keys.
/// serde_json's map sorts keys, and weir reads a request's head (and rewrites its model by
/// byte span) more cheaply when the model comes first.
fn model_first(mut object: Map<String, Value>) -> Bytes {
    let mut out = Vec::with_capacity(256);
    out.push(b'{');
    let model = object.remove("model");
    let entries = model
        .iter()
        .map(|m| ("model", m))
        .chain(object.iter().map(|(k, v)| (k.as_str(), v)));
    for (i, (key, value)) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        // Writing a string or a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, key);
        out.push(b':');
        let _ = serde_json::to_writer(&mut out, value);
    }
    out.push(b'}');
    Bytes::from(out)
}

/// An OpenAI `data: <json>\n\n` SSE event.
fn put_data(out: &mut BytesMut, value: &Value) {
    out.put_slice(b"data: ");
    out.put_slice(&to_bytes(value));
    out.put_slice(b"\n\n");
}

/// An Anthropic `event: <type>\ndata: <json>\n\n` SSE event.
fn put_event(out: &mut BytesMut, kind: &str, value: &Value) {
    out.put_slice(b"event: ");
    out.put_slice(kind.as_bytes());
    out.put_slice(b"\ndata: ");
    out.put_slice(&to_bytes(value));
    out.put_slice(b"\n\n");
}

// ---------------------------------------------------------------------------
// Finish reasons
// ---------------------------------------------------------------------------

/// Anthropic's `stop_reason` -> OpenAI's `finish_reason` (unknown reasons read as "stop").
pub fn finish_reason(stop_reason: &str) -> &'static str {
    match stop_reason {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and anything new.
        _ => "stop",
    }
}

/// OpenAI's `finish_reason` -> Anthropic's `stop_reason` (unknown reasons read as "end_turn").
pub fn stop_reason(finish_reason: &str) -> &'static str {
    match finish_reason {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

// ---------------------------------------------------------------------------
// Request: Anthropic -> OpenAI
// ---------------------------------------------------------------------------

/// Anthropic Messages request body -> OpenAI chat-completions request body.
/// Err(message) for a body that is not a JSON object or lacks `model`/`messages`
/// (message is client-facing, e.g. "messages: must be an array").
pub fn request_to_openai(body: &[u8]) -> Result<Translated, String> {
    let req = parse_object(body)?;
    let mut dropped = Dropped::default();
    let mut out = Map::new();

    match req.get("model") {
        Some(Value::String(m)) => out.insert("model".into(), Value::String(m.clone())),
        Some(_) => return Err("model: must be a string".into()),
        None => return Err("model: required".into()),
    };
    let messages = match req.get("messages") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err("messages: must be an array".into()),
        None => return Err("messages: required".into()),
    };

    let mut msgs = Vec::new();
    if let Some(system) = req.get("system") {
        let text =
            joined_text(system, "\n\n", &mut dropped).ok_or("system: must be a string or an array of text blocks")?;
        if !text.is_empty() {
            msgs.push(json!({"role": "system", "content": text}));
        }
    }
    for (i, message) in messages.iter().enumerate() {
        anthropic_message_to_openai(i, message, &mut msgs, &mut dropped)?;
    }
    out.insert("messages".into(), Value::Array(msgs));

    for (key, value) in &req {
        anthropic_param_to_openai(key, value, &mut out, &mut dropped)?;
    }
    if !out.contains_key("tools") {
        // OpenAI rejects tool_choice without tools (e.g. when only server tools were sent).
        out.remove("tool_choice");
        out.remove("parallel_tool_calls");
    }
    Ok(Translated {
        body: model_first(out),
        dropped: dropped.0,
    })
}

/// One top-level Anthropic request field (other than model/messages/system) into `out`.
fn anthropic_param_to_openai(
    key: &str,
    value: &Value,
    out: &mut Map<String, Value>,
    dropped: &mut Dropped,
) -> Result<(), String> {
    match key {
        // Handled by the caller; a null is the same as an absent field.
        "model" | "messages" | "system" => {}
        _ if value.is_null() => {}
        "max_tokens" | "temperature" | "top_p" => {
            out.insert(key.into(), value.clone());
        }
        "stop_sequences" => {
            out.insert("stop".into(), value.clone());
        }
        "stream" => {
            out.insert("stream".into(), value.clone());
            if value.as_bool() == Some(true) {
                // Anthropic streams always end with usage; ask OpenAI for it too.
                out.insert("stream_options".into(), json!({"include_usage": true}));
            }
        }
        "tools" => {
            let tools = anthropic_tools_to_openai(value, dropped)?;
            if !tools.is_empty() {
                out.insert("tools".into(), Value::Array(tools));
            }
        }
        "tool_choice" => anthropic_tool_choice_to_openai(value, out, dropped),
        "metadata" => {
            if let Some(user) = value.get("user_id").and_then(Value::as_str) {
                out.insert("user".into(), Value::String(user.to_string()));
            }
        }
        _ => dropped.add(key),
    }
    Ok(())
}

/// `messages[i]` of an Anthropic request, appended to `msgs` as one or more OpenAI messages.
fn anthropic_message_to_openai(
    i: usize,
    message: &Value,
    msgs: &mut Vec<Value>,
    dropped: &mut Dropped,
) -> Result<(), String> {
    if !message.is_object() {
        return Err(format!("messages[{i}]: must be an object"));
    }
    let role = str_field(message, "role");
    let content = message
        .get("content")
        .ok_or_else(|| format!("messages[{i}].content: required"))?;
    match (role, content) {
        ("user" | "assistant", Value::String(s)) => {
            msgs.push(json!({"role": role, "content": s}));
            Ok(())
        }
        ("user", Value::Array(blocks)) => {
            anthropic_user_blocks(blocks, msgs, dropped);
            Ok(())
        }
        ("assistant", Value::Array(blocks)) => {
            msgs.push(anthropic_assistant_blocks(blocks, dropped));
            Ok(())
        }
        ("user" | "assistant", _) => Err(format!(
            "messages[{i}].content: must be a string or an array of content blocks"
        )),
        _ => Err(format!("messages[{i}].role: must be \"user\" or \"assistant\"")),
    }
}

/// A user message's blocks: tool results become `tool` messages (first, since OpenAI wants
/// them right after the assistant's tool calls), the rest one user message.
fn anthropic_user_blocks(blocks: &[Value], msgs: &mut Vec<Value>, dropped: &mut Dropped) {
    let mut parts = Vec::new();
    for block in blocks {
        match type_of(block) {
            "text" => parts.push(json!({"type": "text", "text": str_field(block, "text")})),
            "image" => match anthropic_image_to_openai(block) {
                Some(part) => parts.push(part),
                None => dropped.add("image"),
            },
            "tool_result" => msgs.push(anthropic_tool_result_to_openai(block, dropped)),
            other => dropped.add(other),
        }
    }
    if parts.is_empty() {
        return;
    }
    let content = match parts.as_slice() {
        [only] if type_of(only) == "text" => only.get("text").cloned().unwrap_or(Value::Null),
        _ => Value::Array(parts),
    };
    msgs.push(json!({"role": "user", "content": content}));
}

/// An Anthropic image block -> an OpenAI `image_url` part; `None` for other sources (files).
fn anthropic_image_to_openai(block: &Value) -> Option<Value> {
    let source = block.get("source")?;
    let url = match type_of(source) {
        "base64" => format!(
            "data:{};base64,{}",
            str_field(source, "media_type"),
            str_field(source, "data")
        ),
        "url" => source.get("url")?.as_str()?.to_string(),
        _ => return None,
    };
    Some(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// An Anthropic `tool_result` block -> an OpenAI `tool` message with its text.
/// `is_error` has no OpenAI counterpart and is dropped silently; non-text parts of the
/// result (images) are reported by type.
fn anthropic_tool_result_to_openai(block: &Value, dropped: &mut Dropped) -> Value {
    let content = block.get("content").unwrap_or(&Value::Null);
    let text = joined_text(content, "\n\n", dropped).unwrap_or_default();
    json!({
        "role": "tool",
        "tool_call_id": str_field(block, "tool_use_id"),
        "content": text,
    })
}

/// An assistant message's blocks -> one OpenAI assistant message: texts joined (as a
/// stream would concatenate them), tool uses as `tool_calls`; content null when only
/// tool calls.
fn anthropic_assistant_blocks(blocks: &[Value], dropped: &mut Dropped) -> Value {
    let mut text = String::new();
    let mut has_text = false;
    let mut calls = Vec::new();
    for block in blocks {
        match type_of(block) {
            "text" => {
                has_text = true;
                text.push_str(str_field(block, "text"));
            }
            "tool_use" => calls.push(tool_use_to_call(block)),
            other => dropped.add(other),
        }
    }
    let mut msg = Map::new();
    msg.insert("role".into(), "assistant".into());
    let content = if has_text || calls.is_empty() {
        Value::String(text)
    } else {
        Value::Null
    };
    msg.insert("content".into(), content);
    if !calls.is_empty() {
        msg.insert("tool_calls".into(), Value::Array(calls));
    }
    Value::Object(msg)
}

/// An Anthropic `tool_use` block -> an OpenAI tool call (arguments = input as a JSON string).
fn tool_use_to_call(block: &Value) -> Value {
    let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
    json!({
        "id": str_field(block, "id"),
        "type": "function",
        "function": {
            "name": str_field(block, "name"),
            "arguments": serde_json::to_string(&input).unwrap_or_else(|_| "{}".into()),
        }
    })
}

/// Anthropic `tools` -> OpenAI function tools. Server tools (a `type` other than
/// "custom") are dropped and reported by their type.
fn anthropic_tools_to_openai(value: &Value, dropped: &mut Dropped) -> Result<Vec<Value>, String> {
    let tools = value.as_array().ok_or("tools: must be an array")?;
    let mut out = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        let kind = type_of(tool);
        if !kind.is_empty() && kind != "custom" {
            dropped.add(kind);
            continue;
        }
        let name = tool
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("tools[{i}].name: required"))?;
        let mut function = Map::new();
        function.insert("name".into(), name.into());
        if let Some(d) = tool.get("description").filter(|d| !d.is_null()) {
            function.insert("description".into(), d.clone());
        }
        if let Some(schema) = tool.get("input_schema").filter(|s| !s.is_null()) {
            function.insert("parameters".into(), schema.clone());
        }
        out.push(json!({"type": "function", "function": function}));
    }
    Ok(out)
}

/// Anthropic `tool_choice` -> OpenAI `tool_choice` (and `parallel_tool_calls: false`
/// for `disable_parallel_tool_use`). An unknown shape is reported as "tool_choice".
fn anthropic_tool_choice_to_openai(value: &Value, out: &mut Map<String, Value>, dropped: &mut Dropped) {
    let choice = match type_of(value) {
        "auto" => json!("auto"),
        "any" => json!("required"),
        "none" => json!("none"),
        "tool" => json!({"type": "function", "function": {"name": str_field(value, "name")}}),
        _ => {
            dropped.add("tool_choice");
            return;
        }
    };
    out.insert("tool_choice".into(), choice);
    if value.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
        out.insert("parallel_tool_calls".into(), Value::Bool(false));
    }
}

// ---------------------------------------------------------------------------
// Request: OpenAI -> Anthropic
// ---------------------------------------------------------------------------

/// OpenAI chat-completions request body -> Anthropic Messages request body.
/// `default_max_tokens` is used when the request has neither `max_tokens` nor
/// `max_completion_tokens` (Anthropic requires max_tokens). Err for non-object / missing
/// `messages`, for `n` > 1 ("n: Anthropic providers answer one choice").
pub fn request_from_openai(body: &[u8], default_max_tokens: u64) -> Result<Translated, String> {
    let req = parse_object(body)?;
    let mut dropped = Dropped::default();
    let messages = match req.get("messages") {
        Some(Value::Array(a)) => a,
        Some(_) => return Err("messages: must be an array".into()),
        None => return Err("messages: required".into()),
    };
    if let Some(n) = req.get("n").filter(|n| !n.is_null()) {
        match n.as_u64() {
            Some(0 | 1) => {}
            Some(_) => return Err("n: Anthropic providers answer one choice".into()),
            None => return Err("n: must be a positive integer".into()),
        }
    }

    let mut out = Map::new();
    if let Some(model) = req.get("model") {
        out.insert("model".into(), model.clone());
    }
    out.insert("max_tokens".into(), openai_max_tokens(&req, default_max_tokens)?.into());

    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        openai_message_to_anthropic(i, message, &mut system, &mut turns, &mut dropped)?;
    }
    if !system.is_empty() {
        out.insert("system".into(), Value::String(system.join("\n\n")));
    }
    let turns: Vec<Value> = turns.into_iter().map(finish_turn).collect();
    out.insert("messages".into(), Value::Array(turns));

    for (key, value) in &req {
        openai_param_to_anthropic(key, value, &mut out, &mut dropped)?;
    }
    apply_parallel_tool_calls(&req, &mut out);
    if !out.contains_key("tools") {
        out.remove("tool_choice");
    }
    Ok(Translated {
        body: model_first(out),
        dropped: dropped.0,
    })
}

/// `max_completion_tokens`, else `max_tokens`, else the default.
fn openai_max_tokens(req: &Map<String, Value>, default: u64) -> Result<u64, String> {
    for key in ["max_completion_tokens", "max_tokens"] {
        match req.get(key) {
            None | Some(Value::Null) => continue,
            Some(v) => {
                return v
                    .as_u64()
                    .ok_or_else(|| format!("{key}: must be a non-negative integer"))
            }
        }
    }
    Ok(default)
}

/// One top-level OpenAI request field (other than messages) into `out`.
fn openai_param_to_anthropic(
    key: &str,
    value: &Value,
    out: &mut Map<String, Value>,
    dropped: &mut Dropped,
) -> Result<(), String> {
    match key {
        // Handled elsewhere, or hints with nothing to carry.
        "model"
        | "messages"
        | "max_tokens"
        | "max_completion_tokens"
        | "n"
        | "stream_options"
        | "parallel_tool_calls" => {}
        _ if value.is_null() => {}
        "top_p" | "stream" => {
            out.insert(key.into(), value.clone());
        }
        "temperature" => {
            let t = value.as_f64().ok_or("temperature: must be a number")?;
            let clamped = t.clamp(0.0, 1.0);
            if clamped != t {
                dropped.add("temperature");
            }
            out.insert(key.into(), json!(clamped));
        }
        "stop" => {
            let stops = match value {
                Value::String(s) => vec![Value::String(s.clone())],
                Value::Array(a) => a.clone(),
                _ => return Err("stop: must be a string or an array of strings".into()),
            };
            if !stops.is_empty() {
                out.insert("stop_sequences".into(), Value::Array(stops));
            }
        }
        "tools" => {
            let tools = openai_tools_to_anthropic(value, dropped)?;
            if !tools.is_empty() {
                out.insert("tools".into(), Value::Array(tools));
            }
        }
        "tool_choice" => match openai_tool_choice_to_anthropic(value) {
            Some(choice) => {
                out.insert("tool_choice".into(), choice);
            }
            None => dropped.add("tool_choice"),
        },
        "user" => {
            if let Some(user) = value.as_str() {
                out.insert("metadata".into(), json!({"user_id": user}));
            }
        }
        _ => dropped.add(key),
    }
    Ok(())
}

/// `parallel_tool_calls: false` -> `disable_parallel_tool_use: true` inside `tool_choice`
/// (an `{type:auto}` one is made when the request had none).
fn apply_parallel_tool_calls(req: &Map<String, Value>, out: &mut Map<String, Value>) {
    if req.get("parallel_tool_calls").and_then(Value::as_bool) != Some(false) {
        return;
    }
    let choice = out.entry("tool_choice").or_insert_with(|| json!({"type": "auto"}));
    if let Some(obj) = choice.as_object_mut() {
        // Anthropic rejects the flag on {type:none}.
        if obj.get("type").and_then(Value::as_str) != Some("none") {
            obj.insert("disable_parallel_tool_use".into(), Value::Bool(true));
        }
    }
}

/// OpenAI `tool_choice` -> Anthropic `tool_choice`; `None` for an unknown shape.
fn openai_tool_choice_to_anthropic(value: &Value) -> Option<Value> {
    match value {
        Value::String(s) => match s.as_str() {
            "auto" => Some(json!({"type": "auto"})),
            "required" => Some(json!({"type": "any"})),
            "none" => Some(json!({"type": "none"})),
            _ => None,
        },
        Value::Object(_) if type_of(value) == "function" => {
            let name = value.get("function")?.get("name")?.as_str()?;
            Some(json!({"type": "tool", "name": name}))
        }
        _ => None,
    }
}

/// OpenAI function tools -> Anthropic custom tools; other tool types reported by type.
fn openai_tools_to_anthropic(value: &Value, dropped: &mut Dropped) -> Result<Vec<Value>, String> {
    let tools = value.as_array().ok_or("tools: must be an array")?;
    let mut out = Vec::new();
    for (i, tool) in tools.iter().enumerate() {
        if type_of(tool) != "function" {
            dropped.add(type_of(tool));
            continue;
        }
        let function = tool
            .get("function")
            .ok_or_else(|| format!("tools[{i}].function: required"))?;
        let name = function
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("tools[{i}].function.name: required"))?;
        let mut t = Map::new();
        t.insert("name".into(), name.into());
        if let Some(d) = function.get("description").filter(|d| !d.is_null()) {
            t.insert("description".into(), d.clone());
        }
        let schema = function
            .get("parameters")
            .filter(|p| !p.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object"}));
        t.insert("input_schema".into(), schema);
        out.push(Value::Object(t));
    }
    Ok(out)
}

/// `messages[i]` of an OpenAI request: system/developer text goes to `system`, the rest
/// to `turns`, merged with the previous turn when the role repeats (Anthropic requires
/// alternation). A message that carries nothing is skipped.
fn openai_message_to_anthropic(
    i: usize,
    message: &Value,
    system: &mut Vec<String>,
    turns: &mut Vec<(&'static str, Vec<Value>)>,
    dropped: &mut Dropped,
) -> Result<(), String> {
    if !message.is_object() {
        return Err(format!("messages[{i}]: must be an object"));
    }
    let content = message.get("content").unwrap_or(&Value::Null);
    let bad_content = || format!("messages[{i}].content: must be a string or an array of parts");
    let (role, blocks) = match str_field(message, "role") {
        "system" | "developer" => {
            let text = joined_text(content, "\n\n", dropped).ok_or_else(bad_content)?;
            if !text.is_empty() {
                system.push(text);
            }
            return Ok(());
        }
        "user" => ("user", openai_user_content(content, dropped).ok_or_else(bad_content)?),
        "assistant" => (
            "assistant",
            openai_assistant_blocks(message, dropped).ok_or_else(bad_content)?,
        ),
        "tool" => {
            let text = joined_text(content, "\n\n", dropped).ok_or_else(bad_content)?;
            let block = json!({
                "type": "tool_result",
                "tool_use_id": str_field(message, "tool_call_id"),
                "content": text,
            });
            ("user", vec![block])
        }
        "function" => {
            dropped.add("function");
            return Ok(());
        }
        other => return Err(format!("messages[{i}].role: unsupported role {other:?}")),
    };
    if blocks.is_empty() {
        return Ok(());
    }
    match turns.last_mut() {
        Some((last, existing)) if *last == role => existing.extend(blocks),
        _ => turns.push((role, blocks)),
    }
    Ok(())
}

/// A user message's content -> Anthropic blocks (empty texts skipped: Anthropic rejects them).
fn openai_user_content(content: &Value, dropped: &mut Dropped) -> Option<Vec<Value>> {
    let parts = match content {
        Value::String(s) => return Some(text_blocks(s)),
        Value::Null => return Some(Vec::new()),
        Value::Array(parts) => parts,
        _ => return None,
    };
    let mut blocks = Vec::new();
    for part in parts {
        match type_of(part) {
            "text" => blocks.extend(text_blocks(str_field(part, "text"))),
            "image_url" => blocks.push(openai_image_to_anthropic(part)),
            other => dropped.add(other),
        }
    }
    Some(blocks)
}

/// A text block, or nothing for an empty text.
fn text_blocks(text: &str) -> Vec<Value> {
    if text.is_empty() {
        Vec::new()
    } else {
        vec![json!({"type": "text", "text": text})]
    }
}

/// An OpenAI `image_url` part -> an Anthropic image block: base64 for a `data:` URL,
/// a URL source otherwise.
fn openai_image_to_anthropic(part: &Value) -> Value {
    let image = part.get("image_url").unwrap_or(&Value::Null);
    // `image_url` is an object with `url`; some clients send the URL string directly.
    let url = image.as_str().unwrap_or_else(|| str_field(image, "url"));
    if let Some((media_type, data)) = parse_data_url(url) {
        return json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        });
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

/// `data:<media type>;base64,<data>` -> (media type, data).
fn parse_data_url(url: &str) -> Option<(&str, &str)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let media_type = meta.strip_suffix(";base64")?;
    Some((media_type, data))
}

/// An assistant message -> Anthropic blocks: its text (content and refusal), then its
/// tool calls as `tool_use` blocks. `None` when the content is of an impossible kind.
fn openai_assistant_blocks(message: &Value, dropped: &mut Dropped) -> Option<Vec<Value>> {
    let content = message.get("content").unwrap_or(&Value::Null);
    let mut blocks = Vec::new();
    match content {
        Value::String(s) => blocks.extend(text_blocks(s)),
        Value::Array(parts) => {
            for part in parts {
                match type_of(part) {
                    "text" => blocks.extend(text_blocks(str_field(part, "text"))),
                    "refusal" => blocks.extend(text_blocks(str_field(part, "refusal"))),
                    other => dropped.add(other),
                }
            }
        }
        Value::Null => {}
        _ => return None,
    }
    if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
        blocks.extend(text_blocks(refusal));
    }
    if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
        blocks.extend(calls.iter().map(call_to_tool_use));
    }
    if message.get("function_call").is_some_and(|f| !f.is_null()) {
        dropped.add("function_call");
    }
    Some(blocks)
}

/// An OpenAI tool call -> an Anthropic `tool_use` block (input = arguments parsed;
/// `{}` when they are not a JSON object).
fn call_to_tool_use(call: &Value) -> Value {
    let function = call.get("function").unwrap_or(&Value::Null);
    json!({
        "type": "tool_use",
        "id": str_field(call, "id"),
        "name": str_field(function, "name"),
        "input": parse_arguments(str_field(function, "arguments")),
    })
}

/// Tool-call arguments (a JSON string) -> an object; `{}` when unparsable or not an object.
fn parse_arguments(arguments: &str) -> Value {
    match serde_json::from_str::<Value>(arguments) {
        Ok(v @ Value::Object(_)) => v,
        _ => json!({}),
    }
}

/// A finished turn -> an Anthropic message. A user turn's tool results go first
/// (Anthropic requires it); a lone text block becomes a plain string.
fn finish_turn((role, mut blocks): (&'static str, Vec<Value>)) -> Value {
    if role == "user" {
        // Stable: keeps the order within tool results and within the rest.
        blocks.sort_by_key(|b| type_of(b) != "tool_result");
    }
    let content = match blocks.as_slice() {
        [only] if type_of(only) == "text" => only.get("text").cloned().unwrap_or(Value::Null),
        _ => Value::Array(blocks),
    };
    json!({"role": role, "content": content})
}

// ---------------------------------------------------------------------------
// Non-stream answers
// ---------------------------------------------------------------------------

/// Anthropic message (a 200 non-stream answer) -> OpenAI `chat.completion` JSON. None if not a message.
pub fn response_to_openai(body: &[u8]) -> Option<Bytes> {
    let msg = Value::Object(parse_object_opt(body)?);
    if type_of(&msg) != "message" {
        return None;
    }
    let blocks = msg.get("content")?.as_array()?;
    let mut text = String::new();
    let mut has_text = false;
    let mut calls = Vec::new();
    for block in blocks {
        match type_of(block) {
            "text" => {
                has_text = true;
                text.push_str(str_field(block, "text"));
            }
            "tool_use" => calls.push(tool_use_to_call(block)),
            _ => {} // thinking and server-tool blocks have no OpenAI form
        }
    }
    let mut message = Map::new();
    message.insert("role".into(), "assistant".into());
    message.insert(
        "content".into(),
        if has_text { Value::String(text) } else { Value::Null },
    );
    if !calls.is_empty() {
        message.insert("tool_calls".into(), Value::Array(calls));
    }
    let usage = msg.get("usage").unwrap_or(&Value::Null);
    let out = json!({
        "id": str_field(&msg, "id"),
        "object": "chat.completion",
        "created": unix_now(),
        "model": str_field(&msg, "model"),
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": finish_reason(str_field(&msg, "stop_reason")),
            "logprobs": null,
        }],
        "usage": openai_usage(
            count(usage.get("input_tokens")),
            count(usage.get("output_tokens")),
            count(usage.get("cache_read_input_tokens")),
            count(usage.get("cache_creation_input_tokens")),
        ),
    });
    Some(to_bytes(&out))
}

/// OpenAI `chat.completion` JSON -> Anthropic message JSON. None if not a completion.
pub fn response_from_openai(body: &[u8]) -> Option<Bytes> {
    let completion = Value::Object(parse_object_opt(body)?);
    let choice = first_choice(&completion)?;
    let message = choice.get("message")?;
    if !message.is_object() {
        return None;
    }
    let mut ignored = Dropped::default();
    let content = openai_assistant_blocks(message, &mut ignored).unwrap_or_default();
    let reason = choice
        .get("finish_reason")
        .and_then(Value::as_str)
        .map_or("end_turn", stop_reason);
    let usage = completion.get("usage").unwrap_or(&Value::Null);
    let out = json!({
        "id": str_field(&completion, "id"),
        "type": "message",
        "role": "assistant",
        "model": str_field(&completion, "model"),
        "content": content,
        "stop_reason": reason,
        "stop_sequence": null,
        "usage": anthropic_usage(usage),
    });
    Some(to_bytes(&out))
}

/// Anthropic's usage object from OpenAI's: the cached part of the prompt is reported
/// apart from the rest, as Anthropic does.
fn anthropic_usage(usage: &Value) -> Value {
    let (prompt, completion, cached) = openai_counts(usage);
    json!({
        "input_tokens": prompt.saturating_sub(cached),
        "output_tokens": completion,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    })
}

/// (prompt, completion, cached) from an OpenAI usage object; 0 for what is absent.
fn openai_counts(usage: &Value) -> (u64, u64, u64) {
    let cached = count(usage.get("prompt_tokens_details").and_then(|d| d.get("cached_tokens")));
    (
        count(usage.get("prompt_tokens")),
        count(usage.get("completion_tokens")),
        cached,
    )
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// An Anthropic error type -> (OpenAI status, OpenAI type, OpenAI code).
fn openai_error_kind(anthropic_type: &str) -> Option<(u16, &'static str, Option<&'static str>)> {
    Some(match anthropic_type {
        "invalid_request_error" => (400, "invalid_request_error", None),
        "authentication_error" => (401, "authentication_error", Some("invalid_api_key")),
        "permission_error" => (403, "permission_error", None),
        "not_found_error" => (404, "invalid_request_error", Some("model_not_found")),
        "request_too_large" => (413, "invalid_request_error", None),
        "rate_limit_error" => (429, "rate_limit_error", Some("rate_limit_exceeded")),
        "api_error" => (500, "server_error", None),
        "overloaded_error" => (503, "server_error", Some("overloaded")),
        _ => return None,
    })
}

/// The text of a body that is not the expected error shape (a placeholder when empty).
fn body_text(status: u16, body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body).trim().to_string();
    if text.is_empty() {
        format!("upstream error (HTTP {status})")
    } else {
        text
    }
}

/// The OpenAI error envelope.
fn openai_error_envelope(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

/// An Anthropic error object `{type, message}` -> the OpenAI envelope's (type, code) and
/// the status it implies (`None` for an unknown type).
fn anthropic_error_parts(error: &Value) -> (Option<u16>, &'static str, Option<&'static str>) {
    match openai_error_kind(str_field(error, "type")) {
        Some((status, kind, code)) => (Some(status), kind, code),
        None => (None, "api_error", None),
    }
}

/// An Anthropic error answer (status, body) -> (status for an OpenAI client, OpenAI envelope
/// `{"error":{"message","type","param":null,"code"}}`). A body that is not Anthropic's error
/// shape keeps its text as the message.
pub fn error_to_openai(status: u16, body: &[u8]) -> (u16, Bytes) {
    let error = parse_object_opt(body).and_then(|mut m| m.remove("error"));
    match error.filter(Value::is_object) {
        Some(error) => {
            let (mapped, kind, code) = anthropic_error_parts(&error);
            let message = match str_field(&error, "message") {
                "" => body_text(status, body),
                m => m.to_string(),
            };
            let out = openai_error_envelope(&message, kind, code);
            (mapped.unwrap_or(status), to_bytes(&out))
        }
        None => {
            let out = openai_error_envelope(&body_text(status, body), openai_type_for_status(status), None);
            (status, to_bytes(&out))
        }
    }
}

/// OpenAI's error type for a status, for a body that did not say.
fn openai_type_for_status(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

/// (status for an Anthropic client, Anthropic error type) from an OpenAI-side status.
fn anthropic_error_kind(status: u16) -> (u16, &'static str) {
    match status {
        400 | 422 => (400, "invalid_request_error"),
        401 => (401, "authentication_error"),
        403 => (403, "permission_error"),
        404 => (404, "not_found_error"),
        413 => (413, "request_too_large"),
        429 => (429, "rate_limit_error"),
        503 | 529 => (529, "overloaded_error"),
        500..=599 => (status, "api_error"),
        400..=499 => (status, "invalid_request_error"),
        _ => (500, "api_error"),
    }
}

/// The message of an OpenAI error envelope (or of a bare `{"error":"text"}`).
fn openai_error_message(body: &[u8]) -> Option<String> {
    let mut map = parse_object_opt(body)?;
    match map.remove("error")? {
        Value::String(s) => Some(s),
        error => error.get("message")?.as_str().map(str::to_string),
    }
}

/// An OpenAI-shaped error (status, body — OpenAI's envelope, or weir's own, which is the same
/// envelope: {"error":{"message","type","param","code"}}) -> (status for an Anthropic client,
/// Anthropic error body `{"type":"error","error":{"type":…,"message":…}}`).
/// The status decides the type; OpenAI's `code` has no Anthropic field and is dropped.
pub fn error_from_openai(status: u16, body: &[u8]) -> (u16, Bytes) {
    let (status, kind) = anthropic_error_kind(status);
    let message = openai_error_message(body).unwrap_or_else(|| body_text(status, body));
    let out = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, to_bytes(&out))
}

/// An OpenAI error type (as in an in-band stream error) -> the closest Anthropic type.
fn anthropic_type_for_openai_type(kind: &str) -> &'static str {
    match kind {
        "invalid_request_error" => "invalid_request_error",
        "authentication_error" => "authentication_error",
        "permission_error" => "permission_error",
        "not_found_error" => "not_found_error",
        "rate_limit_error" | "insufficient_quota" => "rate_limit_error",
        "overloaded_error" | "overloaded" => "overloaded_error",
        _ => "api_error",
    }
}

// ---------------------------------------------------------------------------
// Stream: Anthropic -> OpenAI
// ---------------------------------------------------------------------------

/// Translates an Anthropic event stream into OpenAI chat-completion chunks, event by event.
#[derive(Debug, Clone)]
pub struct StreamToOpenAi {
    include_usage: bool,
    /// `data: ` and a text chunk up to its content, once `message_start` told
    /// the id and model: a text delta (nearly every event) is written
    /// around its text without building a JSON value.
    text_head: Vec<u8>,
    id: String,
    model: String,
    created: u64,
    input_tokens: u64,
    output_tokens: u64,
    cache_read: u64,
    cache_creation: u64,
    /// (Anthropic block index, OpenAI tool-call index) of each tool_use block seen.
    tools: Vec<(u64, u64)>,
}

impl StreamToOpenAi {
    /// `include_usage`: emit OpenAI's final usage-only chunk (`"choices":[]`, `usage`) before [DONE].
    pub fn new(include_usage: bool) -> Self {
        StreamToOpenAi {
            include_usage,
            text_head: Vec::new(),
            id: String::new(),
            model: String::new(),
            created: unix_now(),
            input_tokens: 0,
            output_tokens: 0,
            cache_read: 0,
            cache_creation: 0,
            tools: Vec::new(),
        }
    }

    /// One Anthropic SSE event: its `event:` name (may be empty: then use the data's "type")
    /// and its `data:` payload. Appends zero or more whole OpenAI SSE events, each exactly
    /// `data: <json>\n\n`, to `out`; after `message_stop`, `data: [DONE]\n\n`.
    /// `ping` -> nothing. An `error` event -> `data: {"error":{"message","type","code":null,"param":null}}\n\n`
    /// (no [DONE]). Returns false when the data is not valid JSON / not a known event shape
    /// (the caller treats that as a malformed stream); unknown event *types* are ignored (true).
    pub fn event(&mut self, name: &str, data: &[u8], out: &mut BytesMut) -> bool {
        if matches!(name, "content_block_delta" | "") && !self.text_head.is_empty() && self.fast_text(data, out) {
            return true;
        }
        let Some(data) = parse_object_opt(data).map(Value::Object) else {
            return false;
        };
        let kind = if name.is_empty() { type_of(&data) } else { name };
        match kind {
            "message_start" => self.message_start(&data, out),
            "content_block_start" => self.block_start(&data, out),
            "content_block_delta" => self.block_delta(&data, out),
            "message_delta" => self.message_delta(&data, out),
            "message_stop" => {
                self.message_stop(out);
                true
            }
            "error" => self.error(&data, out),
            "" => false,
            // ping, content_block_stop, and event types added later.
            _ => true,
        }
    }

    /// The common event, a `text_delta`, read into a borrowed struct and
    /// written around the stream's text prefix. `false`: not one (or not
    /// readable so): the general path decides.
    fn fast_text(&self, data: &[u8], out: &mut BytesMut) -> bool {
        let Ok(e) = serde_json::from_slice::<fast::AnthropicDelta>(data) else {
            return false;
        };
        if e.kind.as_deref().is_some_and(|k| k != "content_block_delta") || e.delta.kind != "text_delta" {
            return false;
        }
        if !e.delta.text.is_empty() {
            out.put_slice(&self.text_head);
            fast::put_json_str(out, &e.delta.text);
            out.put_slice(b"},\"finish_reason\":null}]}\n\n");
        }
        true
    }

    /// A chunk with the stream's id/created/model around `choices`.
    fn chunk(&self, choices: Value) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        })
    }

    /// Emits a chunk whose single choice has `delta` and `finish_reason`.
    fn put_delta(&self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        let choice = json!([{"index": 0, "delta": delta, "finish_reason": finish}]);
        put_data(out, &self.chunk(choice));
    }

    /// Takes the counts present in an Anthropic usage object (absent ones keep their value).
    fn take_usage(&mut self, usage: &Value) {
        let fields: [(&str, &mut u64); 4] = [
            ("input_tokens", &mut self.input_tokens),
            ("output_tokens", &mut self.output_tokens),
            ("cache_read_input_tokens", &mut self.cache_read),
            ("cache_creation_input_tokens", &mut self.cache_creation),
        ];
        for (key, slot) in fields {
            if let Some(n) = usage.get(key).and_then(Value::as_u64) {
                *slot = n;
            }
        }
    }

    /// `message_start`: remembers id, model and usage; emits the role chunk.
    fn message_start(&mut self, data: &Value, out: &mut BytesMut) -> bool {
        let Some(message) = data.get("message").filter(|m| m.is_object()) else {
            return false;
        };
        self.id = str_field(message, "id").to_string();
        self.model = str_field(message, "model").to_string();
        self.text_head = fast::openai_text_head(&self.id, self.created, &self.model);
        if let Some(usage) = message.get("usage") {
            self.take_usage(usage);
        }
        self.put_delta(out, json!({"role": "assistant", "content": ""}), None);
        true
    }

    /// `content_block_start`: a tool_use block opens a tool call; a text block may carry text.
    fn block_start(&mut self, data: &Value, out: &mut BytesMut) -> bool {
        let Some(block) = data.get("content_block").filter(|b| b.is_object()) else {
            return false;
        };
        match type_of(block) {
            "text" => {
                let text = str_field(block, "text");
                if !text.is_empty() {
                    self.put_delta(out, json!({"content": text}), None);
                }
            }
            "tool_use" => {
                let k = self.tools.len() as u64;
                self.tools.push((count(data.get("index")), k));
                let call = json!({
                    "index": k,
                    "id": str_field(block, "id"),
                    "type": "function",
                    "function": {"name": str_field(block, "name"), "arguments": ""},
                });
                self.put_delta(out, json!({"tool_calls": [call]}), None);
            }
            _ => {} // thinking, server tools: nothing to say in OpenAI's format
        }
        true
    }

    /// `content_block_delta`: text and tool-argument pieces; thinking is not forwarded.
    fn block_delta(&mut self, data: &Value, out: &mut BytesMut) -> bool {
        let Some(delta) = data.get("delta").filter(|d| d.is_object()) else {
            return false;
        };
        match type_of(delta) {
            "text_delta" => {
                let text = str_field(delta, "text");
                if !text.is_empty() {
                    self.put_delta(out, json!({"content": text}), None);
                }
            }
            "input_json_delta" => {
                let index = count(data.get("index"));
                let partial = str_field(delta, "partial_json");
                let tool = self.tools.iter().rev().find(|(block, _)| *block == index);
                if let (Some((_, k)), false) = (tool, partial.is_empty()) {
                    let call = json!({"index": k, "function": {"arguments": partial}});
                    self.put_delta(out, json!({"tool_calls": [call]}), None);
                }
            }
            _ => {} // thinking_delta, signature_delta, citations_delta
        }
        true
    }

    /// `message_delta`: the finish reason chunk; usage counts present here win.
    fn message_delta(&mut self, data: &Value, out: &mut BytesMut) -> bool {
        if let Some(usage) = data.get("usage") {
            self.take_usage(usage);
        }
        let reason = data
            .get("delta")
            .and_then(|d| d.get("stop_reason"))
            .and_then(Value::as_str);
        if let Some(reason) = reason {
            self.put_delta(out, json!({}), Some(finish_reason(reason)));
        }
        true
    }

    /// `message_stop`: the usage-only chunk (when asked for), then `[DONE]`.
    fn message_stop(&mut self, out: &mut BytesMut) {
        if self.include_usage {
            let mut chunk = self.chunk(json!([]));
            chunk["usage"] = openai_usage(
                self.input_tokens,
                self.output_tokens,
                self.cache_read,
                self.cache_creation,
            );
            put_data(out, &chunk);
        }
        out.put_slice(b"data: [DONE]\n\n");
    }

    /// `error`: OpenAI's in-band error event (the stream ends without `[DONE]`).
    fn error(&mut self, data: &Value, out: &mut BytesMut) -> bool {
        let Some(error) = data.get("error").filter(|e| e.is_object()) else {
            return false;
        };
        let (_, kind, _) = anthropic_error_parts(error);
        let out_error = json!({"error": {
            "message": str_field(error, "message"),
            "type": kind,
            "code": null,
            "param": null,
        }});
        put_data(out, &out_error);
        true
    }
}

// ---------------------------------------------------------------------------
// Stream: OpenAI -> Anthropic
// ---------------------------------------------------------------------------

/// The content block the Anthropic stream has open.
#[derive(Debug, Clone, PartialEq)]
enum OpenBlock {
    Text,
    /// A tool_use block: the OpenAI tool-call index and id it came from.
    Tool {
        index: u64,
        id: String,
    },
}

/// Translates OpenAI chat-completion chunks into an Anthropic event stream, event by event.
#[derive(Debug, Clone, Default)]
pub struct StreamFromOpenAi {
    started: bool,
    finished: bool,
    /// The open block and its Anthropic index.
    open: Option<(u64, OpenBlock)>,
    /// The index the next block will get.
    next_block: u64,
    stop_reason: Option<&'static str>,
    /// (prompt, completion, cached) from the last chunk with usage.
    usage: Option<(u64, u64, u64)>,
}

impl StreamFromOpenAi {
    pub fn new() -> Self {
        Self::default()
    }

    /// One OpenAI SSE event's data (a chunk's JSON, or `[DONE]`). Appends whole Anthropic
    /// SSE events, each exactly `event: <type>\ndata: <json>\n\n`, to `out`.
    /// Returns false for data that is neither [DONE] nor a JSON object.
    pub fn event(&mut self, data: &[u8], out: &mut BytesMut) -> bool {
        if let (false, Some((index, OpenBlock::Text))) = (self.finished, &self.open) {
            if fast::anthropic_text(*index, data, out) {
                return true;
            }
        }
        if data.trim_ascii() == b"[DONE]" {
            self.done(out);
            return true;
        }
        let Some(chunk) = parse_object_opt(data).map(Value::Object) else {
            return false;
        };
        if self.finished {
            return true;
        }
        if let Some(error) = chunk.get("error").filter(|e| !e.is_null()) {
            self.error(error, out);
            return true;
        }
        if let Some(usage) = chunk.get("usage").filter(|u| u.is_object()) {
            self.usage = Some(openai_counts(usage));
        }
        if !self.started {
            self.start(&chunk, out);
        }
        if let Some(choice) = first_choice(&chunk) {
            self.choice(choice, out);
        }
        true
    }

    /// `message_start`, from the first chunk's id and model.
    fn start(&mut self, chunk: &Value, out: &mut BytesMut) {
        self.started = true;
        let (prompt, _, cached) = self.usage.unwrap_or((0, 0, 0));
        let event = json!({
            "type": "message_start",
            "message": {
                "id": str_field(chunk, "id"),
                "type": "message",
                "role": "assistant",
                "model": str_field(chunk, "model"),
                "content": [],
                "stop_reason": null,
                "stop_sequence": null,
                "usage": {"input_tokens": prompt.saturating_sub(cached), "output_tokens": 0},
            }
        });
        put_event(out, "message_start", &event);
    }

    /// Choice 0's delta and finish reason.
    fn choice(&mut self, choice: &Value, out: &mut BytesMut) {
        let delta = choice.get("delta").unwrap_or(&Value::Null);
        for key in ["content", "refusal"] {
            let text = str_field(delta, key);
            if !text.is_empty() {
                self.text(text, out);
            }
        }
        if let Some(calls) = delta.get("tool_calls").and_then(Value::as_array) {
            for call in calls {
                self.tool_call(call, out);
            }
        }
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.stop_reason = Some(stop_reason(reason));
        }
    }

    /// A piece of text: into the open text block, or a new one.
    fn text(&mut self, text: &str, out: &mut BytesMut) {
        if !matches!(self.open, Some((_, OpenBlock::Text))) {
            self.open_block(OpenBlock::Text, json!({"type": "text", "text": ""}), out);
        }
        let index = self.open.as_ref().map_or(0, |(i, _)| *i);
        let event = json!({
            "type": "content_block_delta",
            "index": index,
            "delta": {"type": "text_delta", "text": text},
        });
        put_event(out, "content_block_delta", &event);
    }

    /// A tool-call delta: opens a tool_use block for a new call, forwards argument pieces.
    fn tool_call(&mut self, call: &Value, out: &mut BytesMut) {
        let index = count(call.get("index"));
        let id = call.get("id").and_then(Value::as_str);
        let function = call.get("function").unwrap_or(&Value::Null);
        let is_new = match &self.open {
            Some((_, OpenBlock::Tool { index: i, id: open_id })) => {
                *i != index || id.is_some_and(|id| !id.is_empty() && id != open_id)
            }
            _ => true,
        };
        if is_new {
            let id = match id {
                Some(id) if !id.is_empty() => id.to_string(),
                _ => format!("call_{index}"),
            };
            let block = json!({
                "type": "tool_use",
                "id": id,
                "name": str_field(function, "name"),
                "input": {},
            });
            self.open_block(OpenBlock::Tool { index, id }, block, out);
        }
        let arguments = str_field(function, "arguments");
        if !arguments.is_empty() {
            let block_index = self.open.as_ref().map_or(0, |(i, _)| *i);
            let event = json!({
                "type": "content_block_delta",
                "index": block_index,
                "delta": {"type": "input_json_delta", "partial_json": arguments},
            });
            put_event(out, "content_block_delta", &event);
        }
    }

    /// Closes the open block (if any) and opens `kind` with `content_block`.
    fn open_block(&mut self, kind: OpenBlock, content_block: Value, out: &mut BytesMut) {
        self.close_block(out);
        let index = self.next_block;
        self.next_block += 1;
        let event = json!({
            "type": "content_block_start",
            "index": index,
            "content_block": content_block,
        });
        put_event(out, "content_block_start", &event);
        self.open = Some((index, kind));
    }

    /// `content_block_stop` for the open block, if any.
    fn close_block(&mut self, out: &mut BytesMut) {
        if let Some((index, _)) = self.open.take() {
            let event = json!({"type": "content_block_stop", "index": index});
            put_event(out, "content_block_stop", &event);
        }
    }

    /// `[DONE]`: closes the block, then `message_delta` (reason, usage) and `message_stop`.
    fn done(&mut self, out: &mut BytesMut) {
        if self.finished {
            return;
        }
        if !self.started {
            self.start(&Value::Null, out);
        }
        self.close_block(out);
        let (prompt, completion, cached) = self.usage.unwrap_or((0, 0, 0));
        let mut usage = json!({
            "input_tokens": prompt.saturating_sub(cached),
            "output_tokens": completion,
        });
        if cached > 0 {
            usage["cache_read_input_tokens"] = json!(cached);
        }
        let event = json!({
            "type": "message_delta",
            "delta": {"stop_reason": self.stop_reason.unwrap_or("end_turn"), "stop_sequence": null},
            "usage": usage,
        });
        put_event(out, "message_delta", &event);
        put_event(out, "message_stop", &json!({"type": "message_stop"}));
        self.finished = true;
    }

    /// An in-band OpenAI error -> Anthropic's `error` event; the stream is over.
    fn error(&mut self, error: &Value, out: &mut BytesMut) {
        let (kind, message) = match error {
            Value::String(s) => ("api_error", s.as_str()),
            _ => (
                anthropic_type_for_openai_type(str_field(error, "type")),
                str_field(error, "message"),
            ),
        };
        let event = json!({"type": "error", "error": {"type": kind, "message": message}});
        put_event(out, "error", &event);
        self.finished = true;
    }
}

/// Choice 0 of a completion or chunk: the choice with `index` 0 (or no index at all).
/// Other choices are not translated: Anthropic answers with one.
fn first_choice(value: &Value) -> Option<&Value> {
    value
        .get("choices")?
        .as_array()?
        .iter()
        .find(|c| c.is_object() && c.get("index").is_none_or(|i| i.as_u64() == Some(0)))
}

/// The stream translators' fast path: a text delta, by far the most common
/// event, read into borrowed structs (no `Value` tree) and written around
/// fixed text (no `Value` serialised). Anything else takes the general path.
mod fast {
    use bytes::{BufMut, BytesMut};
    use serde::de::IgnoredAny;
    use serde::Deserialize;
    use std::borrow::Cow;

    /// An Anthropic `content_block_delta` (its `index` ignored: one text block at a time).
    #[derive(Deserialize)]
    pub(super) struct AnthropicDelta<'a> {
        #[serde(rename = "type", borrow, default)]
        pub kind: Option<Cow<'a, str>>,
        #[serde(borrow)]
        pub delta: TextDelta<'a>,
    }

    #[derive(Deserialize)]
    pub(super) struct TextDelta<'a> {
        #[serde(rename = "type", borrow)]
        pub kind: Cow<'a, str>,
        #[serde(borrow, default)]
        pub text: Cow<'a, str>,
    }

    /// An OpenAI chunk, as far as deciding it is plain text for choice 0.
    #[derive(Deserialize)]
    struct OpenAiChunk<'a> {
        #[serde(borrow)]
        choices: Vec<OpenAiChoice<'a>>,
        #[serde(default)]
        usage: Option<IgnoredAny>,
        #[serde(default)]
        error: Option<IgnoredAny>,
    }

    #[derive(Deserialize)]
    struct OpenAiChoice<'a> {
        #[serde(default)]
        index: u64,
        #[serde(borrow)]
        delta: OpenAiDelta<'a>,
        #[serde(default)]
        finish_reason: Option<IgnoredAny>,
    }

    #[derive(Deserialize)]
    struct OpenAiDelta<'a> {
        #[serde(borrow, default)]
        content: Option<Cow<'a, str>>,
        #[serde(default)]
        refusal: Option<IgnoredAny>,
        #[serde(default)]
        tool_calls: Option<IgnoredAny>,
    }

    /// `s` as a JSON string literal.
    pub(super) fn put_json_str(out: &mut BytesMut, s: &str) {
        // Writing to memory cannot fail.
        let _ = serde_json::to_writer(out.writer(), s);
    }

    /// `data: ` and an OpenAI text chunk up to its content's value.
    pub(super) fn openai_text_head(id: &str, created: u64, model: &str) -> Vec<u8> {
        let mut head = BytesMut::from(&b"data: {\"id\":"[..]);
        put_json_str(&mut head, id);
        head.put_slice(format!(",\"object\":\"chat.completion.chunk\",\"created\":{created},\"model\":").as_bytes());
        put_json_str(&mut head, model);
        head.put_slice(b",\"choices\":[{\"index\":0,\"delta\":{\"content\":");
        head.to_vec()
    }

    /// An OpenAI chunk that is only text for choice 0 (no finish, usage,
    /// tool call or error), written as Anthropic's `text_delta` into the
    /// open text block `index`. `false`: it is something else.
    pub(super) fn anthropic_text(index: u64, data: &[u8], out: &mut BytesMut) -> bool {
        let Ok(c) = serde_json::from_slice::<OpenAiChunk>(data) else {
            return false;
        };
        let [choice] = c.choices.as_slice() else { return false };
        let plain = c.usage.is_none()
            && c.error.is_none()
            && choice.index == 0
            && choice.finish_reason.is_none()
            && choice.delta.refusal.is_none()
            && choice.delta.tool_calls.is_none();
        let Some(text) = choice.delta.content.as_deref().filter(|t| plain && !t.is_empty()) else {
            return false;
        };
        out.put_slice(b"event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":");
        out.put_slice(index.to_string().as_bytes());
        out.put_slice(b",\"delta\":{\"type\":\"text_delta\",\"text\":");
        put_json_str(out, text);
        out.put_slice(b"}}\n\n");
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses bytes that must be JSON.
    fn j(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).expect("output is JSON")
    }

    fn to_openai(req: Value) -> (Value, Vec<String>) {
        let t = request_to_openai(req.to_string().as_bytes()).expect("translates");
        (j(&t.body), t.dropped)
    }

    fn from_openai(req: Value) -> (Value, Vec<String>) {
        let t = request_from_openai(req.to_string().as_bytes(), 4096).expect("translates");
        (j(&t.body), t.dropped)
    }

    /// The JSON of each `data: <json>\n\n` event of an OpenAI stream (`[DONE]` as a string).
    fn openai_events(out: &[u8]) -> Vec<Value> {
        let text = std::str::from_utf8(out).expect("utf-8");
        assert!(text.is_empty() || text.ends_with("\n\n"), "whole events: {text:?}");
        text.split_terminator("\n\n")
            .map(|e| {
                let data = e.strip_prefix("data: ").expect("data: prefix");
                assert!(!data.contains('\n'));
                if data == "[DONE]" {
                    json!("[DONE]")
                } else {
                    j(data.as_bytes())
                }
            })
            .collect()
    }

    /// (event name, JSON) of each `event: ..\ndata: ..\n\n` event of an Anthropic stream.
    fn anthropic_events(out: &[u8]) -> Vec<(String, Value)> {
        let text = std::str::from_utf8(out).expect("utf-8");
        assert!(text.is_empty() || text.ends_with("\n\n"), "whole events: {text:?}");
        text.split_terminator("\n\n")
            .map(|e| {
                let (name, data) = e.split_once('\n').expect("two lines");
                let name = name.strip_prefix("event: ").expect("event: prefix");
                let data = j(data.strip_prefix("data: ").expect("data: prefix").as_bytes());
                assert_eq!(data["type"], name, "event name matches data type");
                (name.to_string(), data)
            })
            .collect()
    }

    // --- request: Anthropic -> OpenAI ----------------------------------------

    #[test]
    fn to_openai_system_string_and_blocks() {
        let (out, dropped) = to_openai(json!({
            "model": "claude-x", "max_tokens": 100, "system": "Be brief.",
            "messages": [{"role": "user", "content": "Hi"}]
        }));
        assert_eq!(out["model"], "claude-x");
        assert_eq!(out["max_tokens"], 100);
        assert_eq!(
            out["messages"],
            json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Hi"}
            ])
        );
        assert!(dropped.is_empty());

        let (out, dropped) = to_openai(json!({
            "model": "m", "max_tokens": 1,
            "system": [
                {"type": "text", "text": "One.", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "Two."}
            ],
            "messages": [{"role": "user", "content": "Hi"}]
        }));
        assert_eq!(out["messages"][0], json!({"role": "system", "content": "One.\n\nTwo."}));
        assert!(dropped.is_empty(), "cache_control is silent: {dropped:?}");
    }

    #[test]
    fn to_openai_user_blocks_and_images() {
        let (out, _) = to_openai(json!({"model": "m", "max_tokens": 1, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "only"}]},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": [
                {"type": "text", "text": "look"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}},
                {"type": "image", "source": {"type": "url", "url": "https://x/y.jpg"}}
            ]}
        ]}));
        let msgs = &out["messages"];
        assert_eq!(msgs[0], json!({"role": "user", "content": "only"}));
        assert_eq!(msgs[1], json!({"role": "assistant", "content": "ok"}));
        assert_eq!(
            msgs[2]["content"],
            json!([
                {"type": "text", "text": "look"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "image_url", "image_url": {"url": "https://x/y.jpg"}}
            ])
        );
    }

    #[test]
    fn to_openai_tool_use_and_results() {
        let (out, dropped) = to_openai(json!({"model": "m", "max_tokens": 1, "messages": [
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}
            ]},
            {"role": "user", "content": [
                {"type": "text", "text": "here you go"},
                {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": true,
                 "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "toolu_3", "name": "f", "input": {"x": [1, 2]}}
            ]}
        ]}));
        let msgs = out["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 6);
        assert_eq!(msgs[1]["content"], "Checking.");
        let calls = msgs[1]["tool_calls"].as_array().unwrap();
        assert_eq!(calls[0]["id"], "toolu_1");
        assert_eq!(calls[0]["type"], "function");
        assert_eq!(calls[0]["function"]["name"], "get_weather");
        let args: Value = serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, json!({"city": "Paris"}));
        assert_eq!(calls[1]["function"]["arguments"], "{}");
        // Tool messages come first, then the rest of the user message.
        assert_eq!(
            msgs[2],
            json!({"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"})
        );
        assert_eq!(
            msgs[3],
            json!({"role": "tool", "tool_call_id": "toolu_2", "content": "a\n\nb"})
        );
        assert_eq!(msgs[4], json!({"role": "user", "content": "here you go"}));
        // Only tool calls: content null.
        assert_eq!(msgs[5]["content"], Value::Null);
        assert_eq!(msgs[5]["tool_calls"][0]["id"], "toolu_3");
        assert!(dropped.is_empty());
    }

    #[test]
    fn to_openai_drops_unsupported_blocks_by_type() {
        let (out, dropped) = to_openai(json!({"model": "m", "max_tokens": 1, "messages": [
            {"role": "user", "content": [
                {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "x"}},
                {"type": "text", "text": "summarize", "cache_control": {"type": "ephemeral"}},
                {"type": "image", "source": {"type": "file", "file_id": "f"}}
            ]},
            {"role": "assistant", "content": [
                {"type": "thinking", "thinking": "hmm", "signature": "s"},
                {"type": "redacted_thinking", "data": "x"},
                {"type": "thinking", "thinking": "again", "signature": "s"},
                {"type": "text", "text": "done"}
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [
                    {"type": "text", "text": "r"},
                    {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "x"}}
                ]}
            ]}
        ]}));
        assert_eq!(dropped, vec!["document", "image", "thinking", "redacted_thinking"]);
        assert_eq!(out["messages"][0], json!({"role": "user", "content": "summarize"}));
        assert_eq!(out["messages"][1], json!({"role": "assistant", "content": "done"}));
        assert_eq!(
            out["messages"][2],
            json!({"role": "tool", "tool_call_id": "t", "content": "r"})
        );
    }

    #[test]
    fn to_openai_parameters() {
        let (out, dropped) = to_openai(json!({
            "model": "m", "max_tokens": 512, "messages": [{"role": "user", "content": "x"}],
            "stop_sequences": ["END", "STOP"], "temperature": 0.3, "top_p": 0.9, "top_k": 40,
            "stream": true, "metadata": {"user_id": "u-42"},
            "thinking": {"type": "enabled", "budget_tokens": 1000}, "service_tier": "auto",
            "container": "c", "mcp_servers": []
        }));
        assert_eq!(out["max_tokens"], 512);
        assert_eq!(out["stop"], json!(["END", "STOP"]));
        assert_eq!(out["temperature"], 0.3);
        assert_eq!(out["top_p"], 0.9);
        assert_eq!(out["stream"], true);
        assert_eq!(out["stream_options"], json!({"include_usage": true}));
        assert_eq!(out["user"], "u-42");
        assert!(out.get("top_k").is_none() && out.get("metadata").is_none());
        let mut dropped = dropped;
        dropped.sort();
        assert_eq!(
            dropped,
            vec!["container", "mcp_servers", "service_tier", "thinking", "top_k"]
        );

        let (out, _) = to_openai(json!({"model": "m", "max_tokens": 1, "stream": false,
            "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(out["stream"], false);
        assert!(out.get("stream_options").is_none());

        // Nulls are absent fields: neither errors nor reported.
        let (out, dropped) = to_openai(json!({"model": "m", "max_tokens": 1, "tools": null,
            "tool_choice": null, "top_k": null, "stream": null, "system": null,
            "messages": [{"role": "user", "content": "x"}]}));
        assert!(dropped.is_empty(), "{dropped:?}");
        assert_eq!(
            out,
            json!({"model": "m", "max_tokens": 1,
            "messages": [{"role": "user", "content": "x"}]})
        );
    }

    #[test]
    fn to_openai_tools_and_tool_choice() {
        let tools = json!([
            {"name": "get_weather", "description": "Weather", "cache_control": {"type": "ephemeral"},
             "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
            {"type": "custom", "name": "other", "input_schema": {"type": "object"}},
            {"type": "web_search_20250305", "name": "web_search", "max_uses": 5}
        ]);
        let req = |choice: Value| {
            json!({"model": "m", "max_tokens": 1, "tools": tools,
            "tool_choice": choice, "messages": [{"role": "user", "content": "x"}]})
        };
        let (out, dropped) = to_openai(req(json!({"type": "auto"})));
        assert_eq!(dropped, vec!["web_search_20250305"]);
        assert_eq!(
            out["tools"],
            json!([
                {"type": "function", "function": {"name": "get_weather", "description": "Weather",
                  "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
                {"type": "function", "function": {"name": "other", "parameters": {"type": "object"}}}
            ])
        );
        assert_eq!(out["tool_choice"], "auto");
        assert!(out.get("parallel_tool_calls").is_none());
        assert_eq!(to_openai(req(json!({"type": "any"}))).0["tool_choice"], "required");
        assert_eq!(to_openai(req(json!({"type": "none"}))).0["tool_choice"], "none");
        assert_eq!(
            to_openai(req(json!({"type": "tool", "name": "get_weather"}))).0["tool_choice"],
            json!({"type": "function", "function": {"name": "get_weather"}})
        );
        let (out, _) = to_openai(req(json!({"type": "any", "disable_parallel_tool_use": true})));
        assert_eq!(out["tool_choice"], "required");
        assert_eq!(out["parallel_tool_calls"], false);
        let (_, mut dropped) = to_openai(req(json!({"type": "whatever"})));
        dropped.sort();
        assert_eq!(dropped, vec!["tool_choice", "web_search_20250305"]);
    }

    #[test]
    fn to_openai_only_server_tools_leaves_no_tools() {
        let (out, dropped) = to_openai(json!({"model": "m", "max_tokens": 1,
            "tools": [{"type": "web_search_20250305", "name": "web_search"}],
            "tool_choice": {"type": "auto", "disable_parallel_tool_use": true},
            "messages": [{"role": "user", "content": "x"}]}));
        assert_eq!(dropped, vec!["web_search_20250305"]);
        assert!(out.get("tools").is_none());
        assert!(out.get("tool_choice").is_none());
        assert!(out.get("parallel_tool_calls").is_none());
    }

    #[test]
    fn to_openai_errors() {
        let err = |b: &[u8]| request_to_openai(b).unwrap_err();
        assert!(err(b"not json").starts_with("body: invalid JSON"));
        assert_eq!(err(b"[1]"), "body: must be a JSON object");
        assert_eq!(err(br#"{"messages":[]}"#), "model: required");
        assert_eq!(err(br#"{"model":1,"messages":[]}"#), "model: must be a string");
        assert_eq!(err(br#"{"model":"m"}"#), "messages: required");
        assert_eq!(err(br#"{"model":"m","messages":{}}"#), "messages: must be an array");
        assert_eq!(
            err(br#"{"model":"m","messages":[1]}"#),
            "messages[0]: must be an object"
        );
        assert_eq!(
            err(br#"{"model":"m","messages":[{"role":"system","content":"x"}]}"#),
            "messages[0].role: must be \"user\" or \"assistant\""
        );
        assert_eq!(
            err(br#"{"model":"m","messages":[{"role":"user"}]}"#),
            "messages[0].content: required"
        );
        assert!(err(br#"{"model":"m","messages":[{"role":"user","content":5}]}"#).contains("content"));
        assert!(err(br#"{"model":"m","system":5,"messages":[]}"#).starts_with("system:"));
        assert!(err(br#"{"model":"m","tools":{},"messages":[]}"#).starts_with("tools:"));
        assert_eq!(
            err(br#"{"model":"m","tools":[{}],"messages":[]}"#),
            "tools[0].name: required"
        );
    }

    #[test]
    fn requests_put_model_first() {
        let body = br#"{"messages":[{"role":"user","content":"x"}],"max_tokens":1,"model":"m\"q"}"#;
        let out = request_to_openai(body).unwrap().body;
        assert!(out.starts_with(br#"{"model":"m\"q","#), "{out:?}");
        assert_eq!(j(&out)["messages"][0]["content"], "x");
        let out = request_from_openai(body, 1).unwrap().body;
        assert!(out.starts_with(br#"{"model":"m\"q","#), "{out:?}");
        // No model (OpenAI side allows the caller to decide): still a valid object.
        let out = request_from_openai(br#"{"messages":[]}"#, 1).unwrap().body;
        assert_eq!(j(&out), json!({"max_tokens": 1, "messages": []}));
    }

    // --- request: OpenAI -> Anthropic ----------------------------------------

    #[test]
    fn from_openai_system_and_developer_anywhere() {
        let (out, dropped) = from_openai(json!({"model": "gpt-x", "messages": [
            {"role": "system", "content": "Sys one."},
            {"role": "user", "content": "Hi"},
            {"role": "developer", "content": [{"type": "text", "text": "Dev."}]},
            {"role": "assistant", "content": "Hello"}
        ]}));
        assert_eq!(out["model"], "gpt-x");
        assert_eq!(out["system"], "Sys one.\n\nDev.");
        assert_eq!(out["max_tokens"], 4096);
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello"}
            ])
        );
        assert!(dropped.is_empty());
    }

    #[test]
    fn from_openai_user_parts() {
        let (out, dropped) = from_openai(json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this"},
            {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/AA==", "detail": "high"}},
            {"type": "image_url", "image_url": {"url": "https://e.com/a.png"}},
            {"type": "input_audio", "input_audio": {"data": "x", "format": "wav"}},
            {"type": "file", "file": {"file_id": "f"}}
        ]}]}));
        assert_eq!(
            out["messages"][0]["content"],
            json!([
                {"type": "text", "text": "what is this"},
                {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/AA=="}},
                {"type": "image", "source": {"type": "url", "url": "https://e.com/a.png"}}
            ])
        );
        assert_eq!(dropped, vec!["input_audio", "file"]);
    }

    #[test]
    fn from_openai_assistant_tool_calls_and_tool_results() {
        let (out, dropped) = from_openai(json!({"messages": [
            {"role": "user", "content": "weather in Paris and Rome?"},
            {"role": "assistant", "content": "Checking.", "tool_calls": [
                {"id": "call_a", "type": "function", "function": {"name": "w", "arguments": "{\"city\":\"Paris\"}"}},
                {"id": "call_b", "type": "function", "function": {"name": "w", "arguments": "not json"}}
            ]},
            {"role": "tool", "tool_call_id": "call_a", "content": "sunny"},
            {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "rain"}]},
            {"role": "user", "content": "thanks"},
            {"role": "assistant", "content": null, "refusal": "I can't."}
        ]}));
        assert!(dropped.is_empty());
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": "weather in Paris and Rome?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Checking."},
                    {"type": "tool_use", "id": "call_a", "name": "w", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "call_b", "name": "w", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "call_a", "content": "sunny"},
                    {"type": "tool_result", "tool_use_id": "call_b", "content": "rain"},
                    {"type": "text", "text": "thanks"}
                ]},
                {"role": "assistant", "content": "I can't."}
            ])
        );
    }

    #[test]
    fn from_openai_merges_same_role_and_puts_tool_results_first() {
        let (out, _) = from_openai(json!({"messages": [
            {"role": "user", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "b"}]},
            {"role": "assistant", "content": "c", "tool_calls": [
                {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
            {"role": "assistant", "content": ""},
            {"role": "user", "content": "d"},
            {"role": "tool", "tool_call_id": "t1", "content": "r"}
        ]}));
        assert_eq!(
            out["messages"],
            json!([
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "c"},
                    {"type": "tool_use", "id": "t1", "name": "f", "input": {}}
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "r"},
                    {"type": "text", "text": "d"}
                ]}
            ])
        );
    }

    #[test]
    fn from_openai_first_assistant_passes_through() {
        let (out, _) = from_openai(json!({"messages": [
            {"role": "assistant", "content": "I start"},
            {"role": "user", "content": "ok"}
        ]}));
        assert_eq!(out["messages"][0], json!({"role": "assistant", "content": "I start"}));
        assert_eq!(out["messages"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn from_openai_max_tokens() {
        let msgs = json!([{"role": "user", "content": "x"}]);
        assert_eq!(from_openai(json!({"messages": msgs})).0["max_tokens"], 4096);
        assert_eq!(
            from_openai(json!({"messages": msgs, "max_tokens": 10})).0["max_tokens"],
            10
        );
        assert_eq!(
            from_openai(json!({"messages": msgs, "max_tokens": 10, "max_completion_tokens": 20})).0["max_tokens"],
            20
        );
        assert_eq!(
            from_openai(json!({"messages": msgs, "max_tokens": null})).0["max_tokens"],
            4096
        );
        let bad = json!({"messages": msgs, "max_tokens": -1}).to_string();
        assert!(request_from_openai(bad.as_bytes(), 1)
            .unwrap_err()
            .starts_with("max_tokens:"));
    }

    #[test]
    fn from_openai_sampling_and_stream() {
        let msgs = json!([{"role": "user", "content": "x"}]);
        let (out, dropped) = from_openai(json!({"messages": msgs, "stop": "END", "temperature": 0.5,
            "top_p": 0.8, "stream": true, "stream_options": {"include_usage": true}, "n": 1}));
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["temperature"], 0.5);
        assert_eq!(out["top_p"], 0.8);
        assert_eq!(out["stream"], true);
        assert!(out.get("stream_options").is_none() && out.get("n").is_none());
        assert!(dropped.is_empty(), "{dropped:?}");

        let (out, dropped) = from_openai(json!({"messages": msgs, "stop": ["a", "b"], "temperature": 1.7}));
        assert_eq!(out["stop_sequences"], json!(["a", "b"]));
        assert_eq!(out["temperature"], 1.0);
        assert_eq!(dropped, vec!["temperature"]);
    }

    #[test]
    fn from_openai_tools_and_tool_choice() {
        let tools = json!([
            {"type": "function", "function": {"name": "w", "description": "Weather",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            {"type": "function", "function": {"name": "noargs"}},
            {"type": "custom", "custom": {"name": "grammar"}}
        ]);
        let req = |extra: Value| {
            let mut r = json!({"messages": [{"role": "user", "content": "x"}], "tools": tools});
            for (k, v) in extra.as_object().unwrap() {
                r[k] = v.clone();
            }
            from_openai(r)
        };
        let (out, dropped) = req(json!({}));
        assert_eq!(dropped, vec!["custom"]);
        assert_eq!(
            out["tools"],
            json!([
                {"name": "w", "description": "Weather",
                 "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}},
                {"name": "noargs", "input_schema": {"type": "object"}}
            ])
        );
        assert!(out.get("tool_choice").is_none());
        assert_eq!(
            req(json!({"tool_choice": "auto"})).0["tool_choice"],
            json!({"type": "auto"})
        );
        assert_eq!(
            req(json!({"tool_choice": "required"})).0["tool_choice"],
            json!({"type": "any"})
        );
        assert_eq!(
            req(json!({"tool_choice": "none"})).0["tool_choice"],
            json!({"type": "none"})
        );
        assert_eq!(
            req(json!({"tool_choice": {"type": "function", "function": {"name": "w"}}})).0["tool_choice"],
            json!({"type": "tool", "name": "w"})
        );
        assert_eq!(
            req(json!({"parallel_tool_calls": false})).0["tool_choice"],
            json!({"type": "auto", "disable_parallel_tool_use": true})
        );
        assert_eq!(
            req(json!({"tool_choice": "required", "parallel_tool_calls": false})).0["tool_choice"],
            json!({"type": "any", "disable_parallel_tool_use": true})
        );
        let (out, dropped) = req(json!({"tool_choice": "required", "parallel_tool_calls": true}));
        assert_eq!(out["tool_choice"], json!({"type": "any"}));
        assert_eq!(dropped, vec!["custom"]);
        let (_, dropped) = req(json!({"tool_choice": {"type": "allowed_tools"}}));
        assert!(dropped.contains(&"tool_choice".to_string()));
    }

    #[test]
    fn from_openai_reports_dropped_params() {
        let (out, dropped) = from_openai(json!({"model": "m", "messages": [{"role": "user", "content": "x"}],
            "user": "u-1", "frequency_penalty": 0.1, "presence_penalty": 0.2, "logit_bias": {"1": 2},
            "logprobs": true, "top_logprobs": 2, "seed": 7, "response_format": {"type": "json_object"},
            "modalities": ["text"], "audio": {}, "prediction": {}, "reasoning_effort": "low",
            "service_tier": "auto", "store": true, "web_search_options": {}, "functions": [],
            "function_call": "auto", "brand_new_field": 1, "metadata": {"a": "b"}, "seed_null": null}));
        assert_eq!(out["metadata"], json!({"user_id": "u-1"}));
        let mut dropped = dropped;
        dropped.sort();
        let mut want = vec![
            "frequency_penalty",
            "presence_penalty",
            "logit_bias",
            "logprobs",
            "top_logprobs",
            "seed",
            "response_format",
            "modalities",
            "audio",
            "prediction",
            "reasoning_effort",
            "service_tier",
            "store",
            "web_search_options",
            "functions",
            "function_call",
            "brand_new_field",
            "metadata",
        ];
        want.sort();
        assert_eq!(dropped, want);
    }

    #[test]
    fn from_openai_errors() {
        let err = |b: &[u8]| request_from_openai(b, 1).unwrap_err();
        assert!(err(b"{").starts_with("body: invalid JSON"));
        assert_eq!(err(b"\"x\""), "body: must be a JSON object");
        assert_eq!(err(b"{}"), "messages: required");
        assert_eq!(err(br#"{"messages":"x"}"#), "messages: must be an array");
        assert_eq!(
            err(br#"{"messages":[],"n":2}"#),
            "n: Anthropic providers answer one choice"
        );
        assert!(err(br#"{"messages":[],"n":"x"}"#).starts_with("n:"));
        assert!(err(br#"{"messages":[{"role":"wizard","content":"x"}]}"#).contains("role"));
        assert!(err(br#"{"messages":[{"role":"user","content":7}]}"#).contains("content"));
        assert!(err(br#"{"messages":[],"stop":5}"#).starts_with("stop:"));
        assert!(err(br#"{"messages":[],"tools":[{"type":"function"}]}"#).contains("function"));
        assert!(request_from_openai(br#"{"messages":[],"n":1}"#, 1).is_ok());
    }

    #[test]
    fn request_round_trip_openai_anthropic_openai() {
        let original = json!({"model": "m", "max_tokens": 50, "stream": true, "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "let me check", "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "42"},
            {"role": "assistant", "content": "It is 42."}
        ], "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
           "tool_choice": "required", "stop": ["x"]});
        let (anthropic, dropped) = from_openai(original.clone());
        assert!(dropped.is_empty());
        let (back, dropped) = to_openai(anthropic);
        assert!(dropped.is_empty());
        assert_eq!(
            back["messages"],
            json!([
                {"role": "system", "content": "sys"},
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": "let me check", "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
                {"role": "assistant", "content": "It is 42."}
            ])
        );
        assert_eq!(back["tools"], original["tools"]);
        assert_eq!(back["tool_choice"], "required");
        assert_eq!(back["stop"], json!(["x"]));
        assert_eq!(back["max_tokens"], 50);
    }

    // --- responses ------------------------------------------------------------

    #[test]
    fn response_to_openai_text_tools_usage() {
        let body = json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-x",
            "content": [
                {"type": "thinking", "thinking": "...", "signature": "s"},
                {"type": "text", "text": "Let me "},
                {"type": "text", "text": "check."},
                {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"city": "Paris"}}
            ],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 100,
                      "cache_creation_input_tokens": 5}});
        let out = j(&response_to_openai(body.to_string().as_bytes()).unwrap());
        assert_eq!(out["id"], "msg_01");
        assert_eq!(out["object"], "chat.completion");
        assert!(out["created"].as_u64().unwrap() > 1_600_000_000);
        assert_eq!(out["model"], "claude-x");
        let choice = &out["choices"][0];
        assert_eq!(choice["index"], 0);
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(choice["logprobs"], Value::Null);
        assert_eq!(choice["message"]["role"], "assistant");
        assert_eq!(choice["message"]["content"], "Let me check.");
        let call = &choice["message"]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_1");
        assert_eq!(call["function"]["name"], "w");
        assert_eq!(
            j(call["function"]["arguments"].as_str().unwrap().as_bytes()),
            json!({"city": "Paris"})
        );
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 115, "completion_tokens": 20,
            "total_tokens": 135, "prompt_tokens_details": {"cached_tokens": 100},
            "cache_read_input_tokens": 100, "cache_creation_input_tokens": 5})
        );
    }

    #[test]
    fn response_to_openai_only_tools_and_rejects() {
        let body = json!({"id": "msg_2", "type": "message", "model": "m", "stop_reason": "max_tokens",
            "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
            "usage": {"input_tokens": 1, "output_tokens": 2}});
        let out = j(&response_to_openai(body.to_string().as_bytes()).unwrap());
        assert_eq!(out["choices"][0]["message"]["content"], Value::Null);
        assert_eq!(out["choices"][0]["finish_reason"], "length");
        assert_eq!(out["usage"]["prompt_tokens"], 1);
        assert_eq!(out["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        assert!(response_to_openai(b"nope").is_none());
        assert!(response_to_openai(b"[]").is_none());
        assert!(response_to_openai(br#"{"type":"error","error":{}}"#).is_none());
        assert!(response_to_openai(br#"{"type":"message","content":"x"}"#).is_none());
    }

    #[test]
    fn response_from_openai_text_tools_usage() {
        let body = json!({"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "content": "Checking.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{\"c\":\"P\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "v", "arguments": "{bad"}}]}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 30, "total_tokens": 150,
                      "prompt_tokens_details": {"cached_tokens": 100}}});
        let out = j(&response_from_openai(body.to_string().as_bytes()).unwrap());
        assert_eq!(
            out,
            json!({"id": "chatcmpl-9", "type": "message", "role": "assistant",
            "model": "gpt-x", "content": [
                {"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "call_1", "name": "w", "input": {"c": "P"}},
                {"type": "tool_use", "id": "call_2", "name": "v", "input": {}}
            ], "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 20, "output_tokens": 30, "cache_read_input_tokens": 100,
                      "cache_creation_input_tokens": 0}})
        );
    }

    #[test]
    fn response_from_openai_edge_cases() {
        let body = br#"{"id":"x","model":"m","choices":[{"index":0,"finish_reason":"length",
            "message":{"role":"assistant","content":""}}]}"#;
        let out = j(&response_from_openai(body).unwrap());
        assert_eq!(out["content"], json!([]));
        assert_eq!(out["stop_reason"], "max_tokens");
        assert_eq!(
            out["usage"],
            json!({"input_tokens": 0, "output_tokens": 0,
            "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0})
        );
        // Only choice 0 is translated.
        let body = br#"{"id":"x","choices":[{"index":1,"finish_reason":"stop","message":{"content":"one"}},
            {"index":0,"finish_reason":null,"message":{"content":"zero"}}]}"#;
        let out = j(&response_from_openai(body).unwrap());
        assert_eq!(out["content"], json!([{"type": "text", "text": "zero"}]));
        assert_eq!(out["stop_reason"], "end_turn");
        assert!(response_from_openai(b"{]").is_none());
        assert!(response_from_openai(br#"{"choices":[]}"#).is_none());
        assert!(response_from_openai(br#"{"error":{"message":"x"}}"#).is_none());
        assert!(response_from_openai(br#"{"choices":[{"index":0,"message":"x"}]}"#).is_none());
    }

    #[test]
    fn finish_and_stop_reasons() {
        for (stop, finish) in [
            ("end_turn", "stop"),
            ("stop_sequence", "stop"),
            ("max_tokens", "length"),
            ("tool_use", "tool_calls"),
            ("refusal", "content_filter"),
            ("pause_turn", "stop"),
            ("model_context_window_exceeded", "length"),
            ("brand_new", "stop"),
            ("", "stop"),
        ] {
            assert_eq!(finish_reason(stop), finish, "{stop}");
        }
        for (finish, stop) in [
            ("stop", "end_turn"),
            ("length", "max_tokens"),
            ("tool_calls", "tool_use"),
            ("function_call", "tool_use"),
            ("content_filter", "refusal"),
            ("weird", "end_turn"),
        ] {
            assert_eq!(stop_reason(finish), stop, "{finish}");
        }
    }

    #[test]
    fn response_round_trip_openai_anthropic_openai() {
        for reason in ["stop", "length", "tool_calls", "content_filter"] {
            let body = json!({"id": "chatcmpl-1", "model": "m", "choices": [{"index": 0,
                "finish_reason": reason, "message": {"role": "assistant", "content": "Hello there",
                "tool_calls": [{"id": "c1", "type": "function",
                    "function": {"name": "f", "arguments": "{\"k\":[1,2]}"}}]}}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
                          "prompt_tokens_details": {"cached_tokens": 4}}});
            let anthropic = response_from_openai(body.to_string().as_bytes()).unwrap();
            let back = j(&response_to_openai(&anthropic).unwrap());
            let choice = &back["choices"][0];
            assert_eq!(choice["finish_reason"], reason);
            assert_eq!(choice["message"]["content"], "Hello there");
            assert_eq!(
                choice["message"]["tool_calls"],
                body["choices"][0]["message"]["tool_calls"]
            );
            assert_eq!(back["usage"]["prompt_tokens"], 9);
            assert_eq!(back["usage"]["completion_tokens"], 3);
            assert_eq!(back["usage"]["total_tokens"], 12);
            assert_eq!(back["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
        }
    }

    // --- errors ---------------------------------------------------------------

    #[test]
    fn error_to_openai_maps_every_type() {
        let cases = [
            ("invalid_request_error", 400, 400, "invalid_request_error", Value::Null),
            (
                "authentication_error",
                401,
                401,
                "authentication_error",
                json!("invalid_api_key"),
            ),
            ("permission_error", 403, 403, "permission_error", Value::Null),
            (
                "not_found_error",
                404,
                404,
                "invalid_request_error",
                json!("model_not_found"),
            ),
            ("request_too_large", 413, 413, "invalid_request_error", Value::Null),
            (
                "rate_limit_error",
                429,
                429,
                "rate_limit_error",
                json!("rate_limit_exceeded"),
            ),
            ("api_error", 500, 500, "server_error", Value::Null),
            ("overloaded_error", 529, 503, "server_error", json!("overloaded")),
            ("future_error", 418, 418, "api_error", Value::Null),
        ];
        for (kind, status_in, status_out, openai_type, code) in cases {
            let body = json!({"type": "error", "error": {"type": kind, "message": "boom"},
                "request_id": "req_1"});
            let (status, out) = error_to_openai(status_in, body.to_string().as_bytes());
            assert_eq!(status, status_out, "{kind}");
            assert_eq!(
                j(&out),
                json!({"error": {"message": "boom", "type": openai_type,
                "param": null, "code": code}}),
                "{kind}"
            );
        }
    }

    #[test]
    fn error_to_openai_keeps_foreign_bodies_as_text() {
        let (status, out) = error_to_openai(502, b"<html>Bad Gateway</html>");
        assert_eq!(status, 502);
        let out = j(&out);
        assert_eq!(out["error"]["message"], "<html>Bad Gateway</html>");
        assert_eq!(out["error"]["type"], "server_error");
        assert_eq!(out["error"]["param"], Value::Null);
        let (status, out) = error_to_openai(429, b"");
        assert_eq!(status, 429);
        assert_eq!(j(&out)["error"]["type"], "rate_limit_error");
        assert!(j(&out)["error"]["message"].as_str().unwrap().contains("429"));
        let (_, out) = error_to_openai(400, &[0xff, 0xfe]);
        assert!(j(&out)["error"]["message"].is_string());
    }

    #[test]
    fn error_from_openai_by_status() {
        let envelope = |m: &str| json!({"error": {"message": m, "type": "x", "param": null, "code": "c"}});
        let cases = [
            (400, 400, "invalid_request_error"),
            (422, 400, "invalid_request_error"),
            (401, 401, "authentication_error"),
            (403, 403, "permission_error"),
            (404, 404, "not_found_error"),
            (413, 413, "request_too_large"),
            (429, 429, "rate_limit_error"),
            (503, 529, "overloaded_error"),
            (529, 529, "overloaded_error"),
            (500, 500, "api_error"),
            (502, 502, "api_error"),
            (504, 504, "api_error"),
            (418, 418, "invalid_request_error"),
            (409, 409, "invalid_request_error"),
            (200, 500, "api_error"),
        ];
        for (status_in, status_out, kind) in cases {
            let (status, out) = error_from_openai(status_in, envelope("nope").to_string().as_bytes());
            assert_eq!(status, status_out, "{status_in}");
            assert_eq!(
                j(&out),
                json!({"type": "error", "error": {"type": kind, "message": "nope"}})
            );
        }
        let (_, out) = error_from_openai(500, b"upstream exploded");
        assert_eq!(j(&out)["error"]["message"], "upstream exploded");
        let (_, out) = error_from_openai(400, br#"{"error":"plain string"}"#);
        assert_eq!(j(&out)["error"]["message"], "plain string");
        let (_, out) = error_from_openai(400, br#"{"detail":"x"}"#);
        assert_eq!(j(&out)["error"]["message"], r#"{"detail":"x"}"#);
    }

    #[test]
    fn error_round_trip_keeps_message() {
        let (status, openai) = error_to_openai(
            529,
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        );
        let (status, back) = error_from_openai(status, &openai);
        assert_eq!(status, 529);
        assert_eq!(
            j(&back),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
        );
    }

    // --- stream: Anthropic -> OpenAI -------------------------------------------

    /// A realistic Anthropic stream: text, a tool call with split JSON, pings, usage.
    fn anthropic_stream() -> Vec<(&'static str, Value)> {
        vec![
            (
                "message_start",
                json!({"type": "message_start", "message": {"id": "msg_1", "type": "message",
                "role": "assistant", "model": "claude-x", "content": [], "stop_reason": null,
                "stop_sequence": null, "usage": {"input_tokens": 25, "output_tokens": 1,
                "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7}}}),
            ),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "thinking", "thinking": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "thinking_delta", "thinking": "hmm"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "signature_delta", "signature": "sig"}}),
            ),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 0})),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "text", "text": ""}}),
            ),
            ("ping", json!({"type": "ping"})),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "text_delta", "text": "Let me "}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 1,
                "delta": {"type": "text_delta", "text": "check."}}),
            ),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 1})),
            (
                "content_block_start",
                json!({"type": "content_block_start", "index": 2,
                "content_block": {"type": "tool_use", "id": "toolu_9", "name": "get_weather", "input": {}}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": ""}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{\"city\": \"Pa"}}),
            ),
            (
                "content_block_delta",
                json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "ris\"}"}}),
            ),
            ("content_block_stop", json!({"type": "content_block_stop", "index": 2})),
            (
                "message_delta",
                json!({"type": "message_delta",
                "delta": {"stop_reason": "tool_use", "stop_sequence": null},
                "usage": {"output_tokens": 42}}),
            ),
            ("message_stop", json!({"type": "message_stop"})),
        ]
    }

    fn run_to_openai(include_usage: bool, events: &[(&str, Value)]) -> Vec<Value> {
        let mut t = StreamToOpenAi::new(include_usage);
        let mut out = BytesMut::new();
        for (name, data) in events {
            assert!(t.event(name, data.to_string().as_bytes(), &mut out), "{name}");
        }
        openai_events(&out)
    }

    #[test]
    fn stream_to_openai_full_stream() {
        let events = run_to_openai(true, &anthropic_stream());
        assert_eq!(events.len(), 9, "{events:#?}");
        for e in &events[..8] {
            assert_eq!(e["id"], "msg_1");
            assert_eq!(e["object"], "chat.completion.chunk");
            assert_eq!(e["model"], "claude-x");
            assert_eq!(e["created"], events[0]["created"]);
        }
        assert_eq!(
            events[0]["choices"],
            json!([{"index": 0,
            "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])
        );
        assert_eq!(events[1]["choices"][0]["delta"], json!({"content": "Let me "}));
        assert_eq!(events[2]["choices"][0]["delta"], json!({"content": "check."}));
        assert_eq!(
            events[3]["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "id": "toolu_9",
            "type": "function", "function": {"name": "get_weather", "arguments": ""}}]})
        );
        assert_eq!(
            events[4]["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\": \"Pa"}}]})
        );
        assert_eq!(
            events[5]["choices"][0]["delta"],
            json!({"tool_calls": [{"index": 0, "function": {"arguments": "ris\"}"}}]})
        );
        assert_eq!(
            events[6]["choices"][0],
            json!({"index": 0, "delta": {}, "finish_reason": "tool_calls"})
        );
        assert_eq!(events[7]["choices"], json!([]));
        assert_eq!(
            events[7]["usage"],
            json!({"prompt_tokens": 132, "completion_tokens": 42,
            "total_tokens": 174, "prompt_tokens_details": {"cached_tokens": 100},
            "cache_read_input_tokens": 100, "cache_creation_input_tokens": 7})
        );
        assert_eq!(events[8], "[DONE]");
    }

    #[test]
    fn stream_to_openai_without_usage_and_with_names_from_data() {
        let stream = anthropic_stream();
        let unnamed: Vec<(&str, Value)> = stream.iter().map(|(_, d)| ("", d.clone())).collect();
        let events = run_to_openai(false, &unnamed);
        assert_eq!(events.len(), 8);
        assert!(events.iter().all(|e| e.get("usage").is_none()));
        assert_eq!(events[7], "[DONE]");
    }

    #[test]
    fn stream_to_openai_two_tools_and_usage_override() {
        let events = run_to_openai(
            true,
            &[
                (
                    "message_start",
                    json!({"type": "message_start", "message": {"id": "m", "model": "c",
                "usage": {"input_tokens": 5, "output_tokens": 1}}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": "Hi"}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 1,
                "content_block": {"type": "tool_use", "id": "a", "name": "f", "input": {}}}),
                ),
                (
                    "content_block_start",
                    json!({"type": "content_block_start", "index": 2,
                "content_block": {"type": "tool_use", "id": "b", "name": "g", "input": {}}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 2,
                "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
                ),
                (
                    "content_block_delta",
                    json!({"type": "content_block_delta", "index": 7,
                "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
                ),
                (
                    "message_delta",
                    json!({"type": "message_delta", "delta": {"stop_reason": "max_tokens"},
                "usage": {"input_tokens": 6, "output_tokens": 3, "cache_read_input_tokens": 2}}),
                ),
                ("message_stop", json!({"type": "message_stop"})),
            ],
        );
        assert_eq!(events[1]["choices"][0]["delta"], json!({"content": "Hi"}));
        assert_eq!(events[2]["choices"][0]["delta"]["tool_calls"][0]["index"], 0);
        assert_eq!(events[3]["choices"][0]["delta"]["tool_calls"][0]["index"], 1);
        assert_eq!(
            events[4]["choices"][0]["delta"]["tool_calls"][0],
            json!({"index": 1, "function": {"arguments": "{}"}})
        );
        assert_eq!(events[5]["choices"][0]["finish_reason"], "length");
        assert_eq!(events[6]["usage"]["prompt_tokens"], 8);
        assert_eq!(events[6]["usage"]["completion_tokens"], 3);
        assert_eq!(events.len(), 8);
    }

    #[test]
    fn stream_to_openai_error_event() {
        let mut t = StreamToOpenAi::new(true);
        let mut out = BytesMut::new();
        assert!(t.event(
            "message_start",
            br#"{"type":"message_start","message":{"id":"m","model":"c"}}"#,
            &mut out
        ));
        out.clear();
        assert!(t.event(
            "error",
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
            &mut out
        ));
        assert_eq!(
            openai_events(&out),
            vec![json!({"error": {"message": "Overloaded",
            "type": "server_error", "code": null, "param": null}})]
        );
        assert!(!std::str::from_utf8(&out).unwrap().contains("[DONE]"));
    }

    #[test]
    fn stream_to_openai_malformed_and_unknown() {
        let mut t = StreamToOpenAi::new(true);
        let mut out = BytesMut::new();
        assert!(!t.event("message_start", b"{not json", &mut out));
        assert!(!t.event("message_start", b"[1,2]", &mut out));
        assert!(!t.event("message_start", br#"{"type":"message_start"}"#, &mut out));
        assert!(!t.event("content_block_start", br#"{"index":0}"#, &mut out));
        assert!(!t.event("content_block_delta", br#"{"index":0,"delta":5}"#, &mut out));
        assert!(!t.event("error", br#"{"type":"error"}"#, &mut out));
        assert!(!t.event("", br#"{"no":"type"}"#, &mut out));
        assert!(t.event("brand_new_event", br#"{"type":"brand_new_event"}"#, &mut out));
        assert!(t.event("ping", br#"{"type":"ping"}"#, &mut out));
        assert!(t.event(
            "content_block_stop",
            br#"{"type":"content_block_stop","index":0}"#,
            &mut out
        ));
        assert!(out.is_empty());
    }

    // --- stream: OpenAI -> Anthropic -------------------------------------------

    /// A realistic OpenAI stream: role, text, a tool call with split arguments, finish, usage.
    fn openai_stream() -> Vec<Value> {
        let chunk = |choices: Value| {
            json!({"id": "chatcmpl-7", "object": "chat.completion.chunk",
            "created": 1, "model": "gpt-x", "choices": choices})
        };
        let mut usage = chunk(json!([]));
        usage["usage"] = json!({"prompt_tokens": 50, "completion_tokens": 12, "total_tokens": 62,
            "prompt_tokens_details": {"cached_tokens": 30}});
        vec![
            chunk(json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"content": "Let me "}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"content": "check."}, "finish_reason": null}])),
            chunk(
                json!([{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                "function": {"name": "get_weather", "arguments": ""}}]}, "finish_reason": null}]),
            ),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0,
                "function": {"arguments": "{\"city\":"}}]}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {"tool_calls": [{"index": 0,
                "function": {"arguments": "\"Paris\"}"}}]}, "finish_reason": null}])),
            chunk(json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}])),
            usage,
        ]
    }

    fn run_from_openai(chunks: &[Value], done: bool) -> Vec<(String, Value)> {
        let mut t = StreamFromOpenAi::new();
        let mut out = BytesMut::new();
        for c in chunks {
            assert!(t.event(c.to_string().as_bytes(), &mut out));
        }
        if done {
            assert!(t.event(b"[DONE]", &mut out));
        }
        anthropic_events(&out)
    }

    #[test]
    fn stream_from_openai_full_stream() {
        let events = run_from_openai(&openai_stream(), true);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(
            events[0].1,
            json!({"type": "message_start", "message": {"id": "chatcmpl-7",
            "type": "message", "role": "assistant", "model": "gpt-x", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 0, "output_tokens": 0}}})
        );
        assert_eq!(events[1].1["index"], 0);
        assert_eq!(events[1].1["content_block"], json!({"type": "text", "text": ""}));
        assert_eq!(events[2].1["delta"], json!({"type": "text_delta", "text": "Let me "}));
        assert_eq!(events[3].1["delta"], json!({"type": "text_delta", "text": "check."}));
        assert_eq!(events[4].1, json!({"type": "content_block_stop", "index": 0}));
        assert_eq!(
            events[5].1,
            json!({"type": "content_block_start", "index": 1, "content_block":
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {}}})
        );
        assert_eq!(
            events[6].1["delta"],
            json!({"type": "input_json_delta", "partial_json": "{\"city\":"})
        );
        assert_eq!(events[7].1["index"], 1);
        assert_eq!(events[7].1["delta"]["partial_json"], "\"Paris\"}");
        assert_eq!(events[8].1, json!({"type": "content_block_stop", "index": 1}));
        assert_eq!(
            events[9].1,
            json!({"type": "message_delta",
            "delta": {"stop_reason": "tool_use", "stop_sequence": null},
            "usage": {"input_tokens": 20, "output_tokens": 12, "cache_read_input_tokens": 30}})
        );
        assert_eq!(events[10].1, json!({"type": "message_stop"}));
    }

    #[test]
    fn stream_from_openai_parallel_calls_and_refusal() {
        let chunk = |delta: Value| json!({"id": "c", "model": "m", "choices": [{"index": 0, "delta": delta}]});
        let events = run_from_openai(
            &[
                chunk(json!({"refusal": "No."})),
                chunk(json!({"tool_calls": [
                {"index": 0, "id": "a", "function": {"name": "f", "arguments": "{}"}},
                {"index": 1, "id": "b", "function": {"name": "g", "arguments": "{\"x\""}}]})),
                chunk(json!({"tool_calls": [{"index": 1, "id": "b", "function": {"arguments": ":1}"}}]})),
                chunk(json!({"tool_calls": [{"index": 2, "function": {"name": "h"}}]})),
                json!({"id": "c", "choices": [{"index": 1, "delta": {"content": "other choice"}}]}),
            ],
            true,
        );
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "content_block_start",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(events[2].1["delta"]["text"], "No.");
        assert_eq!(events[4].1["content_block"]["id"], "a");
        assert_eq!(events[7].1["content_block"]["id"], "b");
        assert_eq!(events[7].1["index"], 2);
        assert_eq!(events[9].1["delta"]["partial_json"], ":1}");
        assert_eq!(
            events[11].1["content_block"],
            json!({"type": "tool_use", "id": "call_2", "name": "h", "input": {}})
        );
        assert_eq!(events[13].1["delta"]["stop_reason"], "end_turn");
        assert_eq!(events[13].1["usage"], json!({"input_tokens": 0, "output_tokens": 0}));
    }

    #[test]
    fn stream_from_openai_error_done_and_malformed() {
        let mut t = StreamFromOpenAi::default();
        let mut out = BytesMut::new();
        assert!(!t.event(b"{oops", &mut out));
        assert!(!t.event(b"42", &mut out));
        assert!(out.is_empty());
        assert!(t.event(
            br#"{"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"a"}}]}"#,
            &mut out
        ));
        out.clear();
        assert!(t.event(
            br#"{"error":{"message":"rate limited","type":"rate_limit_error","code":null}}"#,
            &mut out
        ));
        assert_eq!(
            anthropic_events(&out),
            vec![(
                "error".to_string(),
                json!({"type": "error",
            "error": {"type": "rate_limit_error", "message": "rate limited"}})
            )]
        );
        out.clear();
        assert!(t.event(b"[DONE]", &mut out));
        assert!(out.is_empty(), "nothing after an error");

        // [DONE] alone still makes a whole, valid message.
        let events = run_from_openai(&[], true);
        let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, vec!["message_start", "message_delta", "message_stop"]);

        let mut t = StreamFromOpenAi::new();
        let mut out = BytesMut::new();
        assert!(t.event(br#"{"error":{"message":"boom","type":"server_error"}}"#, &mut out));
        assert_eq!(anthropic_events(&out)[0].1["error"]["type"], "api_error");
        let mut t = StreamFromOpenAi::new();
        out.clear();
        assert!(t.event(b" [DONE] ", &mut out));
        assert!(t.event(b"[DONE]", &mut out));
        assert_eq!(anthropic_events(&out).len(), 3, "second [DONE] adds nothing");
    }

    #[test]
    fn stream_from_openai_usage_in_first_chunk() {
        let events = run_from_openai(
            &[json!({"id": "c", "model": "m", "choices": [],
            "usage": {"prompt_tokens": 11, "completion_tokens": 0}})],
            true,
        );
        assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 11);
        assert_eq!(events[1].1["usage"], json!({"input_tokens": 11, "output_tokens": 0}));
    }

    /// Assembles an OpenAI stream's chunks into (text, [(id, name, arguments)], finish_reason).
    fn assemble_openai(events: &[Value]) -> (String, Vec<(String, String, String)>, String) {
        let mut text = String::new();
        let mut calls: Vec<(String, String, String)> = Vec::new();
        let mut finish = String::new();
        for e in events {
            let Some(choice) = e.get("choices").and_then(|c| c.get(0)) else {
                continue;
            };
            let delta = &choice["delta"];
            text.push_str(delta["content"].as_str().unwrap_or(""));
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                let i = call["index"].as_u64().unwrap() as usize;
                if calls.len() <= i {
                    calls.resize(i + 1, Default::default());
                }
                if let Some(id) = call["id"].as_str() {
                    calls[i].0 = id.into();
                }
                if let Some(name) = call["function"]["name"].as_str() {
                    calls[i].1 = name.into();
                }
                calls[i]
                    .2
                    .push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                finish = f.into();
            }
        }
        (text, calls, finish)
    }

    #[test]
    fn stream_round_trip_openai_anthropic_openai() {
        let chunks = openai_stream();
        let anthropic = run_from_openai(&chunks, true);
        let mut t = StreamToOpenAi::new(true);
        let mut out = BytesMut::new();
        for (name, data) in &anthropic {
            assert!(t.event(name, data.to_string().as_bytes(), &mut out));
        }
        let back = openai_events(&out);
        let (text, calls, finish) = assemble_openai(&back);
        let (text0, calls0, finish0) = assemble_openai(&chunks);
        assert_eq!(text, text0);
        assert_eq!(text, "Let me check.");
        assert_eq!(calls, calls0);
        assert_eq!(calls[0].2, "{\"city\":\"Paris\"}");
        assert_eq!(finish, finish0);
        let usage = &back[back.len() - 2]["usage"];
        assert_eq!(usage["prompt_tokens"], 50);
        assert_eq!(usage["completion_tokens"], 12);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 30);
        assert_eq!(back.last().unwrap(), "[DONE]");
    }

    // --- robustness: no input panics ------------------------------------------

    /// Copies of `value` with one node replaced by a value of each JSON kind.
    fn mutations(value: &Value) -> Vec<Value> {
        let kinds = [
            json!(null),
            json!(-1),
            json!(1.5),
            json!(u64::MAX),
            json!("s"),
            json!([]),
            json!({}),
            json!(true),
            json!([1, "x", null, {}]),
        ];
        let mut out: Vec<Value> = kinds.to_vec();
        match value {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    for m in mutations(item) {
                        let mut copy = items.clone();
                        copy[i] = m;
                        out.push(Value::Array(copy));
                    }
                }
            }
            Value::Object(map) => {
                for (key, item) in map {
                    for m in mutations(item) {
                        let mut copy = map.clone();
                        copy.insert(key.clone(), m);
                        out.push(Value::Object(copy));
                    }
                }
            }
            _ => {}
        }
        out
    }

    /// Runs every entry point on `body` (only panics matter).
    fn run_all(body: &[u8]) {
        let _ = request_to_openai(body);
        let _ = request_from_openai(body, 1);
        let _ = response_to_openai(body);
        let _ = response_from_openai(body);
        let _ = error_to_openai(400, body);
        let _ = error_from_openai(529, body);
        let mut out = BytesMut::new();
        for name in [
            "",
            "message_start",
            "content_block_start",
            "content_block_delta",
            "message_delta",
            "message_stop",
            "error",
            "ping",
        ] {
            let _ = StreamToOpenAi::new(true).event(name, body, &mut out);
        }
        let mut t = StreamFromOpenAi::new();
        let _ = t.event(body, &mut out);
        let _ = t.event(body, &mut out);
        let _ = t.event(b"[DONE]", &mut out);
    }

    fn samples() -> Vec<Value> {
        let mut samples = vec![
            json!({"model": "m", "max_tokens": 5, "system": [{"type": "text", "text": "s"}], "stream": true,
                "tools": [{"name": "f", "input_schema": {}}], "tool_choice": {"type": "tool", "name": "f"},
                "metadata": {"user_id": "u"}, "messages": [
                {"role": "user", "content": [{"type": "text", "text": "a"},
                    {"type": "image", "source": {"type": "base64", "media_type": "i", "data": "d"}},
                    {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "text", "text": "r"}]}]},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}]}),
            json!({"model": "m", "n": 1, "stop": ["x"], "temperature": 2, "parallel_tool_calls": false,
                "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
                "tool_choice": {"type": "function", "function": {"name": "f"}}, "messages": [
                {"role": "system", "content": [{"type": "text", "text": "s"}]},
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:a;base64,b"}}]},
                {"role": "assistant", "content": "x", "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c", "content": "r"}]}),
            json!({"id": "msg", "type": "message", "model": "m", "stop_reason": "end_turn",
                "content": [{"type": "text", "text": "t"}, {"type": "tool_use", "id": "i", "name": "n", "input": {}}],
                "usage": {"input_tokens": 1, "output_tokens": 2, "cache_read_input_tokens": 3}}),
            json!({"id": "c", "model": "m", "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"content": "x", "refusal": "r", "tool_calls": [{"id": "i",
                "function": {"name": "n", "arguments": "{}"}}]}}],
                "usage": {"prompt_tokens": 1, "prompt_tokens_details": {"cached_tokens": 5}}}),
            json!({"id": "c", "choices": [{"index": 0, "delta": {"content": "x", "tool_calls": [{"index": 0,
                "id": "i", "function": {"name": "n", "arguments": "{"}}]}, "finish_reason": null}],
                "usage": {"prompt_tokens": 1}}),
            json!({"type": "error", "error": {"type": "overloaded_error", "message": "m"}}),
        ];
        samples.extend(anthropic_stream().into_iter().map(|(_, d)| d));
        samples
    }

    #[test]
    fn no_panic_on_mutated_inputs() {
        for sample in samples() {
            for m in mutations(&sample) {
                run_all(m.to_string().as_bytes());
            }
        }
    }

    #[test]
    fn no_panic_on_truncated_or_odd_bytes() {
        for sample in samples() {
            let bytes = sample.to_string().into_bytes();
            for end in 0..=bytes.len() {
                run_all(&bytes[..end]);
            }
        }
        for odd in [
            &b""[..],
            b"\xff\xfe",
            b"null",
            b"[DONE",
            b"{\"a\":1e999}",
            b"{\"error\":null}",
        ] {
            run_all(odd);
        }
    }

    #[test]
    fn fast_text_paths_write_what_the_general_paths_write() {
        let text = "h\u{e9}llo \"quoted\" back\\slash\nline \u{1f600}";
        let data_of = |out: &BytesMut| -> Vec<Value> {
            String::from_utf8_lossy(out)
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .map(|d| serde_json::from_str(d).unwrap())
                .collect()
        };
        // Anthropic -> OpenAI.
        let mut t = StreamToOpenAi::new(false);
        let mut out = BytesMut::new();
        let start = br#"{"type":"message_start","message":{"id":"msg_\"1","model":"c","usage":{"input_tokens":3}}}"#;
        assert!(t.event("message_start", start, &mut out));
        let delta = json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}});
        let (mut fast, mut slow) = (BytesMut::new(), BytesMut::new());
        assert!(t.fast_text(&serde_json::to_vec(&delta).unwrap(), &mut fast));
        assert!(t.block_delta(&delta, &mut slow));
        assert_eq!(data_of(&fast), data_of(&slow));
        assert_eq!(data_of(&fast)[0]["id"], "msg_\"1");
        // A tool's JSON delta is not text: the general path takes it.
        let tool =
            br#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{"}}"#;
        assert!(!t.fast_text(tool, &mut BytesMut::new()));

        // OpenAI -> Anthropic, into an open text block.
        let mut f = StreamFromOpenAi::new();
        let mut out = BytesMut::new();
        let first = br#"{"id":"c1","model":"m","choices":[{"index":0,"delta":{"role":"assistant","content":"a"},"finish_reason":null}]}"#;
        assert!(f.event(first, &mut out));
        let chunk = json!({"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
        let (mut fast, mut slow) = (BytesMut::new(), BytesMut::new());
        assert!(fast::anthropic_text(0, &serde_json::to_vec(&chunk).unwrap(), &mut fast));
        f.text(text, &mut slow);
        assert!(fast.starts_with(b"event: content_block_delta\n"));
        assert_eq!(data_of(&fast), data_of(&slow));
        // A finish, usage, a tool call or a second choice are not plain text.
        for other in [
            r#"{"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"x"}}],"usage":{"prompt_tokens":1}}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"x","tool_calls":[]}}]}"#,
            r#"{"choices":[{"index":1,"delta":{"content":"x"}}]}"#,
            r#"{"choices":[]}"#,
        ] {
            assert!(
                !fast::anthropic_text(0, other.as_bytes(), &mut BytesMut::new()),
                "{other}"
            );
        }
    }
}
